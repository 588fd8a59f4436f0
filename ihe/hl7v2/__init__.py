"""HL7 v2 intake over MLLP: framing, the ER7 codec, acknowledgements, the listener.

``mllp`` frames bytes, ``er7`` turns a frame into segments and unescaped values,
``ack`` writes the acknowledgements, ``listener`` accepts the connections and
``receiver`` stores each message, hands it to the transaction that owns it
(``ihe.swf`` for scheduling and orders, ``ihe.pix`` for patient feeds) and
answers.
"""
