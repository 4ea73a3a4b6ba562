"""One AWS context per command: every request goes through `AwsContext.call`.

Why one funnel: `--dry-run` then prints exactly the requests a real run makes, in the same order (nothing is
simulated separately, so the two cannot drift apart); errors from botocore become one project error that names the
operation; and each resource a command creates is registered with the request that deletes it, so a failure midway
removes what was made and says so. Credentials come only from boto3's standard chain (environment, profile, SSO,
instance role) and are never printed, logged or written anywhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domain_expert.errors import AwsError

ENDPOINT_ENV = "DOMAIN_EXPERT_AWS_ENDPOINT_URL"
INSTALL_FIX = "pip install 'domain-expert[aws]'"
CREDENTIALS_FIX = (
    "configure the standard AWS chain: `aws configure` or `aws sso login --profile NAME` (then --profile NAME), "
    "or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (docs/aws.md)"
)
# error codes that mean "no such thing" for describe/head/get requests
NOT_FOUND = {"404", "NoSuchBucket", "NoSuchKey", "NotFound", "ResourceNotFound", "ResourceNotFoundException"}


def import_boto3() -> Any:
    """boto3 is an optional extra: the default install never needs it."""
    try:
        import boto3
    except ImportError:
        raise AwsError("boto3 is not installed", where="domain-expert aws", fix=INSTALL_FIX) from None
    return boto3


def api_name(method: str) -> str:
    """boto3's method name -> the API operation (what IAM policies and CloudTrail name): head_bucket -> HeadBucket."""
    return "".join(part.title() for part in method.split("_"))


def format_request(n: int, service: str, method: str, params: dict[str, Any]) -> str:
    body = json.dumps(params, indent=2, sort_keys=False, default=str)
    return f"[dry-run] request {n}: {service} {api_name(method)}\n{body}"


@dataclass
class Created:
    """A resource this command made, and the request that deletes it."""

    what: str
    service: str
    method: str
    params: dict[str, Any]


@dataclass
class AwsContext:
    region: str | None = None
    profile: str | None = None
    endpoint_url: str | None = None
    dry_run: bool = False
    echo: Callable[[str], None] = print
    requests: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    created: list[Created] = field(default_factory=list)
    clients: dict[str, Any] = field(default_factory=dict)
    _session: Any = None

    # --- session, region, credentials ----------------------------------------------------------------------------

    @property
    def session(self) -> Any:
        if self._session is None:
            boto3 = import_boto3()
            from botocore.exceptions import ProfileNotFound

            try:
                self._session = boto3.Session(profile_name=self.profile, region_name=self.region)
            except ProfileNotFound:
                raise AwsError(
                    f"AWS profile '{self.profile}' is not configured", where="--profile",
                    fix="list profiles with `aws configure list-profiles`, or leave --profile out",
                ) from None  # fmt: skip
            self.region = self.region or self._session.region_name
            if not self.region:
                raise AwsError(
                    "no AWS region", where="--region",
                    fix="pass --region (e.g. us-east-1), or set AWS_REGION, or a region in your profile",
                )  # fmt: skip
        return self._session

    def check_region(self, service: str) -> None:
        """The region must offer `service` in some partition, per botocore's endpoint data (offline, exact)."""
        session = self.session
        offered = {r for p in session.get_available_partitions() for r in session.get_available_regions(service, p)}
        if self.region not in offered:
            import difflib

            close = difflib.get_close_matches(self.region or "", sorted(offered), n=3, cutoff=0.5)
            raise AwsError(
                f"'{self.region}' is not a region where {service} is offered (botocore's endpoint list)",
                where="--region",
                fix=f"use one of {', '.join(close) if close else ', '.join(sorted(offered)[:6]) + ', ...'}",
            )

    def require_credentials(self) -> None:
        """Before any request: say how to configure credentials instead of failing halfway."""
        if self.dry_run:
            return
        if self.session.get_credentials() is None:
            raise AwsError("no AWS credentials found", where="AWS credential chain", fix=CREDENTIALS_FIX)

    def client(self, service: str) -> Any:
        if service not in self.clients:
            from botocore.config import Config

            url = self.endpoint_url or _env_endpoint()
            self.clients[service] = self.session.client(
                service, region_name=self.region, endpoint_url=url, config=Config(retries={"mode": "standard"})
            )
        return self.clients[service]

    # --- requests ------------------------------------------------------------------------------------------------

    def call(self, service: str, method: str, *, missing_ok: bool = False, **params: Any) -> dict[str, Any] | None:
        """Make (or, with dry_run, print) one request. `missing_ok`: a not-found answer returns None."""
        self.requests.append((service, method, params))
        if self.dry_run:
            self.echo(format_request(len(self.requests), service, method, params))
            return {}
        from botocore.exceptions import ClientError

        try:
            return getattr(self.client(service), method)(**params)
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            message = str(e.response.get("Error", {}).get("Message", ""))
            if missing_ok and (code in NOT_FOUND or (code == "ValidationException" and _says_missing(message))):
                return None
            raise self._request_error(service, method, code, message) from None
        except Exception as e:
            raise self._transport_error(service, method, e) from None

    def upload(self, path: Path, bucket: str, key: str, what: str | None = None) -> None:
        """One file to S3 (managed transfer: PutObject, or a multipart upload for big files). `what` describes a
        file written for the upload (its temporary path would mean nothing in a dry-run's listing)."""
        params = {"Bucket": bucket, "Key": key, "Body": f"<{what or f'file {path}'} ({path.stat().st_size} bytes)>"}
        self.requests.append(("s3", "put_object", params))
        if self.dry_run:
            self.echo(format_request(len(self.requests), "s3", "put_object", params))
            return
        self._transfer("put_object", lambda: self.client("s3").upload_file(str(path), bucket, key))

    def download(self, bucket: str, key: str, path: Path) -> None:
        params = {"Bucket": bucket, "Key": key}
        self.requests.append(("s3", "get_object", params))
        if self.dry_run:
            self.echo(format_request(len(self.requests), "s3", "get_object", params) + f"\n  -> {path}")
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self._transfer("get_object", lambda: self.client("s3").download_file(bucket, key, str(path)))

    def _transfer(self, method: str, fn: Callable[[], None]) -> None:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import ClientError

        try:
            fn()
        except ClientError as e:
            err = e.response.get("Error", {})
            raise self._request_error("s3", method, str(err.get("Code", "")), str(err.get("Message", ""))) from None
        except S3UploadFailedError as e:
            raise self._request_error("s3", method, "UploadFailed", str(e)) from None
        except Exception as e:
            raise self._transport_error("s3", method, e) from None

    def _request_error(self, service: str, method: str, code: str, message: str) -> AwsError:
        fix = None
        if code in {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "403"}:
            fix = f"grant {service}:{api_name(method)} to these credentials (docs/aws.md lists every permission)"
        elif code in {"InvalidClientTokenId", "SignatureDoesNotMatch", "ExpiredToken", "UnrecognizedClientException"}:
            fix = CREDENTIALS_FIX
        return AwsError(f"{code or 'error'}: {message or 'no message'}", where=f"{service} {api_name(method)}",
                        fix=fix)  # fmt: skip

    def _transport_error(self, service: str, method: str, e: Exception) -> Exception:
        from botocore.exceptions import BotoCoreError, NoCredentialsError

        if isinstance(e, NoCredentialsError):
            return AwsError("no AWS credentials found", where=f"{service} {api_name(method)}", fix=CREDENTIALS_FIX)
        if isinstance(e, BotoCoreError):
            return AwsError(str(e), where=f"{service} {api_name(method)}",
                            fix="check the network, --region and --endpoint-url")  # fmt: skip
        return e

    # --- cleanup -------------------------------------------------------------------------------------------------

    def made(self, what: str, service: str, method: str, **params: Any) -> None:
        """Register a resource just created, with the request that deletes it."""
        if not self.dry_run:
            self.created.append(Created(what, service, method, params))

    @contextmanager
    def undo_on_failure(self) -> Iterator[None]:
        """On any error, delete what this command created (newest first); the error says what was cleaned."""
        try:
            yield
        except BaseException as e:
            if not self.created:
                raise
            done, failed = self.cleanup()
            what = e.what if isinstance(e, AwsError) else str(e) or type(e).__name__
            where = e.where if isinstance(e, AwsError) else None
            note = f"cleaned up: {_listing(done) or 'nothing'}"
            if failed:
                note += f"; COULD NOT delete (remove by hand): {'; '.join(failed)}"
            raise AwsError(f"{what} ({note})", where=where, fix=getattr(e, "fix", None)) from e

    def cleanup(self) -> tuple[list[str], list[str]]:
        done: list[str] = []
        failed: list[str] = []
        while self.created:
            c = self.created.pop()
            try:
                self.call(c.service, c.method, missing_ok=True, **c.params)
                done.append(c.what)
            except AwsError as err:
                failed.append(f"{c.what} ({err.what})")
        return done, failed


def _listing(items: list[str], keep: int = 4) -> str:
    more = f"; and {len(items) - keep} more" if len(items) > keep else ""
    return "; ".join(items[:keep]) + more


def _env_endpoint() -> str | None:
    import os

    return os.environ.get(ENDPOINT_ENV) or None


def _says_missing(message: str) -> bool:
    low = message.lower()
    return "could not find" in low or "does not exist" in low or "not found" in low
