"""PIX Manager: the cross-reference of every site's patient identifiers."""
