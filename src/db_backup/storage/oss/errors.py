"""Which oss2 errors are worth a retry, and how to say what went wrong to a person."""

from __future__ import annotations

import oss2


def crc_mismatch(
    expected: int, reported: object, request_id: str
) -> oss2.exceptions.InconsistentError:
    """Returns the error oss2's own whole-object check raises when the CRC-64s differ."""
    return oss2.exceptions.InconsistentError(
        f"InconsistentError: req_id: {request_id}, operation: multipart upload, CRC checksum "
        f"of client: {expected} is mismatch with oss: {reported}",
        request_id,
    )


def describe_oss_error(error: BaseException) -> str:
    """Returns a short human description of an oss2 exception (never containing credentials)."""
    if isinstance(error, oss2.exceptions.InconsistentError):
        return "CRC-64 mismatch between the uploaded data and what OSS stored"
    if isinstance(error, oss2.exceptions.RequestError):
        inner = getattr(error, "exception", None)
        reason = type(inner).__name__ if inner is not None else "request failed"
        if inner is not None and "timed out" in str(inner).lower():
            reason = "timed out"
        return f"network error ({reason})"
    if isinstance(error, oss2.exceptions.ClientError):
        return f"client error ({error.body or error})"
    if isinstance(error, oss2.exceptions.ServerError):
        code = error.code or "no error code"
        message = error.message or ""
        if error.status == 403:
            return f"access denied ({error.status} {code})"
        if error.code == "NoSuchBucket":
            return f"bucket does not exist ({error.status} {code})"
        text = f"{error.status} {code}"
        return f"server error ({text}: {message})" if message else f"server error ({text})"
    return f"{type(error).__name__}: {error}"


def is_retryable(error: BaseException) -> bool:
    """Returns whether repeating the request may help: network errors, 5xx, CRC mismatches."""
    if isinstance(error, oss2.exceptions.InconsistentError | oss2.exceptions.RequestError):
        return True
    if isinstance(error, oss2.exceptions.ServerError):
        return error.status >= 500 or error.status in (408, 429)
    return False
