"""A DICOMweb client (`dicomweb-client`) for a server's root URL, with optional HTTP Basic credentials."""

from __future__ import annotations

from typing import Any

__all__ = ["dicomweb_client"]


def dicomweb_client(url: str, username: str | None = None, password: str | None = None,
                    timeout: float = 30.0, retry: bool = False) -> Any:
    """A `dicomweb_client.api.DICOMwebClient` for `url`, e.g. "http://pacs:8042/dicom-web".

    Args:
        url: the server's DICOMweb root (QIDO-RS, WADO-RS and STOW-RS paths are below it).
        username: HTTP Basic user name (None: no credentials).
        password: its password.
        timeout: seconds for connecting and for each answer.
        retry: let dicomweb-client retry a failed request itself (up to 5 attempts over about 30 s). Off by
            default: a signed report's send must not hold up the signature (the outbox retries later),
            and a pull's error should reach the user at once.
    """
    import requests
    from dicomweb_client.api import DICOMwebClient

    session = requests.Session()
    if username is not None:
        session.auth = (username, password or "")
    client = DICOMwebClient(url.rstrip("/"), session=session, timeout=timeout)
    client.set_http_retry_params(retry=retry)
    return client
