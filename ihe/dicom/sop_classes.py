"""The SOP classes SPIDERS negotiates, as typed constants.

pynetdicom creates the names of :mod:`pynetdicom.sop_class` at import time,
so type checkers do not see them, and pydicom 3.0 names only the storage SOP
classes. Each constant here is the very object pynetdicom creates (looked up
by UID with :func:`~pynetdicom.sop_class.uid_to_sop_class`), under the
keyword PS3.6 Annex A gives it.

Limitations
-----------
Only the Verification and Query/Retrieve SOP classes SPIDERS uses are listed;
storage SOP classes come from pynetdicom's presentation context lists.
"""

from __future__ import annotations

from typing import Final

from pynetdicom.sop_class import SOPClass, uid_to_sop_class

# Verification SOP Class, PS3.4 Annex A.
Verification: Final[SOPClass] = uid_to_sop_class("1.2.840.10008.1.1")

# Patient Root Query/Retrieve Information Model, PS3.4 C.6.1.
PatientRootQueryRetrieveInformationModelFind: Final[SOPClass] = uid_to_sop_class(
    "1.2.840.10008.5.1.4.1.2.1.1"
)
PatientRootQueryRetrieveInformationModelMove: Final[SOPClass] = uid_to_sop_class(
    "1.2.840.10008.5.1.4.1.2.1.2"
)
PatientRootQueryRetrieveInformationModelGet: Final[SOPClass] = uid_to_sop_class(
    "1.2.840.10008.5.1.4.1.2.1.3"
)

# Study Root Query/Retrieve Information Model, PS3.4 C.6.2.
StudyRootQueryRetrieveInformationModelFind: Final[SOPClass] = uid_to_sop_class(
    "1.2.840.10008.5.1.4.1.2.2.1"
)
StudyRootQueryRetrieveInformationModelMove: Final[SOPClass] = uid_to_sop_class(
    "1.2.840.10008.5.1.4.1.2.2.2"
)
StudyRootQueryRetrieveInformationModelGet: Final[SOPClass] = uid_to_sop_class(
    "1.2.840.10008.5.1.4.1.2.2.3"
)

# The Query/Retrieve information models the cache offers to consoles.
QUERY_RETRIEVE_MODELS: Final[tuple[SOPClass, ...]] = (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet,
)
