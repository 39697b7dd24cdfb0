"""AWS Signature Version 4: checking that a request was signed with a known secret key.

Theory of operation. A client signs a request by hashing a *canonical
request* (method, path, query, the headers it chose to sign, the body's
SHA-256), putting that hash in a *string to sign* with the time and the
credential scope (``date/region/service/aws4_request``), and computing an
HMAC-SHA256 of it under a key derived from its secret:
``HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request")``.
It sends the result in the ``Authorization`` header (or, for a presigned URL,
in ``X-Amz-*`` query parameters). The server rebuilds the canonical request
from what it received, byte for byte as the client built it, recomputes the
signature with the secret it holds for the access key the request names,
and compares in constant time. Any change to the signed parts (the body, a
parameter, a signed header) changes the signature.

Rules, as AWS applies them:

* the credential scope must name the service ``sqs``; any region is accepted
  (the region only selects the derived key), and the scope's date must be the
  request time's date;
* the request time (``X-Amz-Date``, or ``Date``) must be within 15 minutes of
  the server's clock, either way; a presigned request also expires after its
  ``X-Amz-Expires`` seconds;
* ``host`` must be among the signed headers;
* a body hash sent in ``X-Amz-Content-SHA256`` must be the body's; the
  ``UNSIGNED-PAYLOAD`` marker is refused unless allowed (without TLS it would
  leave the body open to tampering).

The path must be given as received, still percent-encoded (``/a%20b``): for
every service but S3, the canonical path is that raw path encoded once more,
and decoding it first would lose the difference between ``/`` and ``%2F``.

Derived keys are cached per access key, date and region once a request has
verified with them, so the four key-derivation HMACs run once a day per
client, not per request; a request that fails adds nothing to the cache.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import re
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from email.utils import parsedate_tz
from urllib.parse import quote, unquote

from .errors import ErrorCode, SqsError

__all__ = ["SignatureVerifier", "ALGORITHM", "MAX_SKEW", "UNSIGNED_PAYLOAD"]

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW = 900.0
"""How far, in seconds, a request's time may be from the server's clock (15 minutes, as AWS)."""
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
MAX_EXPIRES = 604_800
_MAX_CACHED_KEYS = 4096
_MAX_CACHED_DATES = 256

_AMZ_DATE = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z")
_HEX_SIGNATURE = re.compile(r"[0-9a-f]{64}")
# A path that normalizing and encoding leave as it is: segments of unreserved characters, no dot segments.
_PLAIN_PATH = re.compile(r"/|(?:/(?!\.\.?(?:/|$))[A-Za-z0-9_.~-]+)+")

Headers = Mapping[str, str] | Iterable[tuple[str, str]]


class SignatureVerifier:
    """Verifies SigV4-signed requests against a table of access key id -> secret access key.

    ``service`` is the service name the credential scope must carry;
    ``max_skew`` the clock-skew window in seconds; ``allow_unsigned_payload``
    accepts ``X-Amz-Content-SHA256: UNSIGNED-PAYLOAD`` (only sensible behind
    TLS). The table is read at each request, so a caller may update it in place.
    """

    __slots__ = ("_credentials", "_service", "_max_skew", "_allow_unsigned", "_keys", "_dates", "_authorizations")

    def __init__(
        self,
        credentials: Mapping[str, str],
        *,
        service: str = "sqs",
        max_skew: float = MAX_SKEW,
        allow_unsigned_payload: bool = False,
    ) -> None:
        self._credentials = credentials
        self._service = service
        self._max_skew = max_skew
        self._allow_unsigned = allow_unsigned_payload
        self._keys: dict[tuple[str, str, str, str], bytes] = {}
        # Request times read, and their epoch seconds: clients sign many requests within one second, and requests
        # signed at a few different seconds arrive interleaved (one kept time would be read again at each).
        self._dates: dict[str, float] = {}
        # An Authorization header up to its signature -> its credential and signed names: a client's headers
        # differ in the signature alone, request after request.
        self._authorizations: dict[str, tuple[str, list[str]]] = {}

    def verify(self, method: str, path: str, query: str, headers: Headers, body: bytes, now: float) -> str:
        """Return the access key id that signed the request, or raise `SqsError`.

        ``path`` is the raw path (percent-encoded, no query), ``query`` the raw
        query string (no ``?``), ``headers`` a mapping or (name, value) pairs (a
        multidict's repeated headers are all taken), ``now`` the time in seconds
        since the epoch. Raises `SqsError` with ``MissingAuthenticationToken``
        (no signature at all), ``IncompleteSignature`` (a malformed one),
        ``InvalidClientTokenId`` (an unknown access key), ``RequestExpired``
        (outside the clock-skew window, or a presigned URL past its expiry) or
        ``SignatureDoesNotMatch`` (anything else, the wrong secret included).
        """
        fields = _header_fields(headers)
        authorization = fields.get("authorization")
        presigned: dict[str, str] | None = None
        if authorization is not None:
            credential, signed_names, signature = self._authorization(authorization[0])
            amz_date = _request_date(fields)
        elif "X-Amz-Signature" in query or "X-Amz-Algorithm" in query:
            presigned = _query_fields(query)
            credential, signed_names, signature, amz_date = _parse_presigned(presigned)
        else:
            raise SqsError(ErrorCode.MISSING_AUTHENTICATION_TOKEN)

        access_key, date, region, service, terminator = _parse_credential(credential)
        if service != self._service:
            raise SqsError(
                ErrorCode.SIGNATURE_DOES_NOT_MATCH,
                f"Credential should be scoped to correct service: '{self._service}'.",
            )
        if terminator != "aws4_request":
            raise SqsError(
                ErrorCode.SIGNATURE_DOES_NOT_MATCH,
                f"Credential should be scoped with a valid terminator: 'aws4_request', not '{terminator[:64]}'.",
            )
        secret = self._credentials.get(access_key)
        if secret is None:
            raise SqsError(ErrorCode.INVALID_CLIENT_TOKEN_ID)
        if date != amz_date[:8]:
            raise SqsError(
                ErrorCode.SIGNATURE_DOES_NOT_MATCH,
                f"Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP:"
                f" '{date[:16]}' != '{amz_date[:8]}', from '{amz_date}'.",
            )
        self._check_time(amz_date, presigned, now)
        if "host" not in signed_names:
            raise SqsError(
                ErrorCode.INCOMPLETE_SIGNATURE,
                "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
            )

        payload_hash = self._payload_hash(fields, body)
        try:
            head = f"{method.upper()}\n{_canonical_path(path)}\n"
            queries = _canonical_queries(query, presigned is not None)
        except UnicodeError:
            # A path or query that is not text (undecodable bytes kept as surrogates) was signed by no SDK.
            raise SqsError(ErrorCode.SIGNATURE_DOES_NOT_MATCH) from None
        tail = f"\n{_canonical_headers(fields, signed_names)}\n{';'.join(signed_names)}\n{payload_hash}"
        scope = f"{date}/{region}/{service}/aws4_request"
        cache_key = (access_key, secret, date, region)
        key = self._keys.get(cache_key)
        derived = key is None
        if key is None:
            key = _signing_key(secret, date, region, service)
        # compare_digest wants ASCII text: anything else is no signature of ours anyway.
        if _HEX_SIGNATURE.fullmatch(signature) is None:
            raise SqsError(ErrorCode.SIGNATURE_DOES_NOT_MATCH)
        for canonical_query in queries:
            canonical_request = head + canonical_query + tail
            # surrogateescape gives back the bytes of headers an HTTP parser decoded that way.
            digest = hashlib.sha256(canonical_request.encode("utf-8", "surrogateescape")).hexdigest()
            string_to_sign = f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"
            expected = hmac.digest(key, string_to_sign.encode(), "sha256").hex()
            if hmac.compare_digest(expected, signature):
                break
        else:
            raise SqsError(ErrorCode.SIGNATURE_DOES_NOT_MATCH)
        if derived:
            if len(self._keys) >= _MAX_CACHED_KEYS:
                self._keys.clear()
            self._keys[cache_key] = key
        return access_key

    def _authorization(self, value: str) -> tuple[str, list[str], str]:
        """`_parse_authorization`, from what an earlier header of the same prefix gave when the signature is last."""
        prefix, marker, signature = value.rpartition("Signature=")
        last = bool(marker) and signature.isalnum()  # a bare hex signature, nothing after it
        if last:
            known = self._authorizations.get(prefix)
            if known is not None:
                return known[0], known[1], signature
        parsed = _parse_authorization(value)
        if last and parsed[2] == signature:
            if len(self._authorizations) >= _MAX_CACHED_KEYS:
                self._authorizations.clear()
            self._authorizations[prefix] = (parsed[0], parsed[1])
        return parsed

    def _check_time(self, amz_date: str, presigned: dict[str, str] | None, now: float) -> None:
        dates = self._dates
        signed_at = dates.get(amz_date)
        if signed_at is None:
            signed_at = _signed_at(amz_date)
            if len(dates) >= _MAX_CACHED_DATES:
                dates.clear()
            dates[amz_date] = signed_at
        if signed_at > now + self._max_skew:
            raise SqsError(
                ErrorCode.REQUEST_EXPIRED,
                f"Signature not yet current: {amz_date} is still later than {_amz(now + self._max_skew)}"
                f" ({_amz(now)} + {self._max_skew / 60:g} min.)",
            )
        if presigned is not None:
            expires = presigned.get("X-Amz-Expires", "")
            if not expires.isdigit() or not 1 <= int(expires) <= MAX_EXPIRES:
                raise SqsError(
                    ErrorCode.INCOMPLETE_SIGNATURE,
                    f"X-Amz-Expires must be an integer between 1 and {MAX_EXPIRES}.",
                )
            if now > signed_at + int(expires):
                raise SqsError(ErrorCode.REQUEST_EXPIRED, "Request has expired")
        elif signed_at < now - self._max_skew:
            raise SqsError(
                ErrorCode.REQUEST_EXPIRED,
                f"Signature expired: {amz_date} is now earlier than {_amz(now - self._max_skew)}"
                f" ({_amz(now)} - {self._max_skew / 60:g} min.)",
            )

    def _payload_hash(self, fields: dict[str, list[str]], body: bytes) -> str:
        declared = fields.get("x-amz-content-sha256")
        actual = hashlib.sha256(body).hexdigest()
        if declared is None:
            return actual
        value = declared[0].strip()
        if value == UNSIGNED_PAYLOAD:
            if self._allow_unsigned:
                return value
            raise SqsError(ErrorCode.SIGNATURE_DOES_NOT_MATCH, "Unsigned payloads are not accepted by this server.")
        if _HEX_SIGNATURE.fullmatch(value) is None or not hmac.compare_digest(value, actual):
            raise SqsError(
                ErrorCode.SIGNATURE_DOES_NOT_MATCH,
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
            )
        return value


def _signed_at(amz_date: str) -> float:
    """The epoch seconds of an ``X-Amz-Date``; raises `SqsError` (``IncompleteSignature``) for a malformed one."""
    match = _AMZ_DATE.fullmatch(amz_date)
    if match is None:
        raise SqsError(
            ErrorCode.INCOMPLETE_SIGNATURE, f"Date must be in ISO-8601 'basic format'. Got '{amz_date[:32]}'."
        )
    try:
        year, month, day, hour, minute, second = (int(part) for part in match.groups())
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()
    except ValueError:
        raise SqsError(ErrorCode.INCOMPLETE_SIGNATURE, f"Date '{amz_date}' is not a valid date.") from None


def _amz(seconds: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(seconds))


def _header_fields(headers: Headers) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    # A list (the fast path's) is checked first: isinstance against an ABC costs more than the rest of a header.
    pairs = headers if type(headers) is list else headers.items() if isinstance(headers, Mapping) else headers
    for name, value in pairs:
        fields.setdefault(name.lower(), []).append(value)
    return fields


def _parse_authorization(value: str) -> tuple[str, list[str], str]:
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise SqsError(ErrorCode.INCOMPLETE_SIGNATURE, f"Unsupported AWS 'algorithm': '{algorithm[:64]}'.")
    parts = {}
    for component in rest.split(","):
        key, equals, item = component.strip().partition("=")
        if equals:
            parts[key] = item
    missing = [name for name in ("Credential", "Signature", "SignedHeaders") if name not in parts]
    if missing:
        raise SqsError(
            ErrorCode.INCOMPLETE_SIGNATURE,
            " ".join(f"Authorization header requires '{name}' parameter." for name in missing),
        )
    return parts["Credential"], _signed_names(parts["SignedHeaders"]), parts["Signature"]


def _parse_presigned(params: dict[str, str]) -> tuple[str, list[str], str, str]:
    missing = [
        name
        for name in ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-SignedHeaders", "X-Amz-Signature")
        if name not in params
    ]
    if missing:
        raise SqsError(
            ErrorCode.INCOMPLETE_SIGNATURE,
            " ".join(f"AWS query-string parameters must include '{name}'." for name in missing),
        )
    if params["X-Amz-Algorithm"] != ALGORITHM:
        raise SqsError(
            ErrorCode.INCOMPLETE_SIGNATURE, f"Unsupported AWS 'algorithm': '{params['X-Amz-Algorithm'][:64]}'."
        )
    return (
        params["X-Amz-Credential"],
        _signed_names(params["X-Amz-SignedHeaders"]),
        params["X-Amz-Signature"],
        params["X-Amz-Date"],
    )


def _signed_names(text: str) -> list[str]:
    names = text.split(";")
    if not all(names) or names != sorted(name.lower() for name in names):
        raise SqsError(
            ErrorCode.INCOMPLETE_SIGNATURE, "SignedHeaders must be lower-case header names, sorted, separated by ';'."
        )
    return names


def _parse_credential(credential: str) -> tuple[str, str, str, str, str]:
    parts = credential.split("/")
    if len(parts) != 5 or not all(parts):
        raise SqsError(
            ErrorCode.INCOMPLETE_SIGNATURE,
            f"Credential must have exactly 5 slash-delimited elements, e.g. keyid/date/region/service/term,"
            f" got '{credential[:128]}'.",
        )
    return parts[0], parts[1], parts[2], parts[3], parts[4]


def _request_date(fields: dict[str, list[str]]) -> str:
    amz_date = fields.get("x-amz-date")
    if amz_date is not None:
        return amz_date[0].strip()
    date = fields.get("date")
    if date is not None:
        parsed = parsedate_tz(date[0])
        if parsed is not None:
            seconds = calendar.timegm(parsed[:6] + (0, 0, 0)) - (parsed[9] or 0)
            return _amz(seconds)
    raise SqsError(
        ErrorCode.INCOMPLETE_SIGNATURE,
        "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
    )


def _query_fields(query: str) -> dict[str, str]:
    fields = {}
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        fields[unquote(key)] = unquote(value)
    return fields


def _canonical_path(path: str) -> str:
    # Remove dot segments and empty segments (RFC 3986 5.2.4; AWS also merges
    # repeated slashes), then encode the raw path once more, as SDKs do. The
    # paths SQS sees (``/``, ``/<account>/<queue>``) are already in that form.
    if _PLAIN_PATH.fullmatch(path) is not None:
        return path
    segments: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment and segment != ".":
            segments.append(segment)
    normalized = "/" + "/".join(segments)
    if path.endswith("/") and segments:
        normalized += "/"
    return quote(normalized, safe="/~")


def _canonical_queries(query: str, presigned: bool) -> list[str]:
    """The canonical query strings a client may have signed: one, or two for an unusual encoding.

    The specification's form decodes each name and value and encodes it again
    (RFC 3986 unreserved characters bare, everything else ``%XX``). botocore,
    for a URL it is given whole, sorts the pairs as they are written instead.
    The two agree whenever the client encoded canonically, as SDKs do; when it
    did not (``%7E`` for ``~``), both forms are tried.
    """
    if not query:
        return [""]
    decoded = []
    written = []
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        if presigned and unquote(key) == "X-Amz-Signature":
            continue
        decoded.append((quote(unquote(key), safe="-_.~"), quote(unquote(value), safe="-_.~")))
        written.append((key, value))
    canonical = "&".join(f"{key}={value}" for key, value in sorted(decoded))
    as_written = "&".join(f"{key}={value}" for key, value in sorted(written))
    return [canonical] if as_written == canonical else [canonical, as_written]


def _canonical_headers(fields: dict[str, list[str]], names: list[str]) -> str:
    lines = []
    for name in names:
        values = fields.get(name)
        if values is None:
            raise SqsError(
                ErrorCode.SIGNATURE_DOES_NOT_MATCH, f"The header '{name[:64]}' is signed but not in the request."
            )
        if len(values) == 1 and (value := values[0]).isascii() and value.isprintable() and "  " not in value:
            # Spaces are its only blanks, never two together: folding them is stripping the ends.
            lines.append(f"{name}:{value.strip()}\n")
        else:
            lines.append(f"{name}:{','.join(' '.join(value.split()) for value in values)}\n")
    return "".join(lines)


def _signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = hmac.new(f"AWS4{secret}".encode(), date.encode(), hashlib.sha256).digest()
    for part in (region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key
