"""A DICOMweb client (`dicomweb-client`) for a server's root URL, with optional HTTP Basic credentials."""

from __future__ import annotations

from typing import Any

__all__ = ["dicomweb_client"]


def dicomweb_client(url: str, username: str | None = None, password: str | None = None,
                    timeout: float = 30.0) -> Any:
    """A `dicomweb_client.api.DICOMwebClient` for `url`, e.g. "http://pacs:8042/dicom-web".

    Args:
        url: the server's DICOMweb root (QIDO-RS, WADO-RS and STOW-RS paths are below it).
        username: HTTP Basic user name (None: no credentials).
        password: its password.
        timeout: seconds for connecting and for each answer.
    """
    import requests
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    if username is not None:
        session.auth = (username, password or "")
    return DICOMwebClient(url.rstrip("/"), session=session, timeout=timeout)
