# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The S3-compatible object storage every off-host phase uses (archive, share, retention).

One target description (an entry of `archive_targets`) and one client, so AWS S3, R2, B2, MinIO
and Hetzner are reached, authenticated and failed the same way. Credentials come from the
target (vault variables) or the host's environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY),
never from process arguments.

boto3 is imported by s3_client, when an S3 target is used, not with this file: an ssh target, a
share without links or a retention run without object storage do without it, and the import costs
a module run about 0.2 s of CPU. The modules check it is installed first (require_libraries).
"""

import importlib

from ansible.module_utils.workshop_errors import WorkshopError, WorkshopUnreachable


def target_argument_spec(required=True):
    """The option describing one off-host target (an `archive_targets` entry), secrets no_log."""
    return dict(
        type="dict",
        required=required,
        options=dict(
            name=dict(type="str", required=True),
            type=dict(type="str", choices=["s3", "ssh"], required=True),
            # s3
            endpoint_url=dict(type="str"),
            region=dict(type="str", default="us-east-1"),
            bucket=dict(type="str"),
            prefix=dict(type="str", default=""),
            storage_class=dict(type="str"),
            access_key=dict(type="str", no_log=True),
            secret_key=dict(type="str", no_log=True),
            validate_certs=dict(type="bool", default=True),
            # ssh
            host=dict(type="str"),
            port=dict(type="int", default=22),
            user=dict(type="str"),
            path=dict(type="path"),
            key_file=dict(type="path"),
        ),
    )


# What a target is called in messages, and the setting that holds it, by what it is used for.
USES = {"archive": ("Archive target", "archive_targets"), "share": ("Share target", "share_target")}


def s3_client(target, use="archive"):
    """A boto3 S3 client for an s3 target (`use`: a key of USES); raises WorkshopError naming the target
    and its setting when it is incomplete."""
    if not target.get("bucket"):
        called, setting = USES[use]
        raise WorkshopError(f"{called} '{target['name']}' (s3) has no bucket: set bucket in {setting}")
    import boto3
    import botocore.config

    options = {}
    if "response_checksum_validation" in botocore.config.Config.OPTION_DEFAULTS:
        # botocore 1.36+ checks a response's checksum when the server sends one; it then cannot read a
        # GET's error (NoSuchKey: "StreamingChecksumBody has no attribute strip"). Every object read here
        # is checked against its sha256 anyway; a checksum asked for (ChecksumMode) is still checked.
        options["response_checksum_validation"] = "when_required"
    config = botocore.config.Config(
        signature_version="s3v4",
        retries={"max_attempts": 5, "mode": "standard"},
        # Path-style addressing works with every S3-compatible server (MinIO, rclone, R2, B2).
        s3={"addressing_style": "path"},
        **options,
    )
    session = boto3.session.Session(
        aws_access_key_id=target.get("access_key") or None,
        aws_secret_access_key=target.get("secret_key") or None,
        region_name=target.get("region") or "us-east-1",
    )
    return session.client(
        "s3", endpoint_url=target.get("endpoint_url") or None, verify=target.get("validate_certs", True), config=config
    )


S3_UNREACHED = ("ConnectionError", "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError")


def s3_call_errors():
    """What an S3 call raises: botocore's own errors and the server's answers (ClientError)."""
    exceptions = importlib.import_module("botocore.exceptions")
    return (exceptions.BotoCoreError, exceptions.ClientError)


def s3_error(target, action, key, exc, use="archive"):
    """A WorkshopError for a failed S3 call: which target (`use`: a key of USES), bucket, key and what the server said."""
    code = None
    if isinstance(exc, s3_call_errors()[1]):
        code = exc.response.get("Error", {}).get("Code", "?")
        said = f"{code}: {exc.response.get('Error', {}).get('Message', '')}".strip()
    else:
        said = str(exc)
    where = f"s3://{target.get('bucket')}/{key}" if key else f"s3://{target.get('bucket')}"
    # A HEAD's refusal has no body to say why: only its status, 403.
    refused = code in ("401", "403") or "Access" in said or "Signature" in said
    hint = " Check access_key/secret_key (or AWS_ACCESS_KEY_ID) and the bucket's permissions." if refused else ""
    # botocore's connection failures (no answer, timeouts), not the server's answers (ClientError).
    unreached = any(cls.__name__ in S3_UNREACHED for cls in type(exc).__mro__)
    return (WorkshopUnreachable if unreached else WorkshopError)(
        f"{USES[use][0]} '{target['name']}' ({target.get('endpoint_url') or 'AWS'}): {action} {where} failed: {said}.{hint}",
        target=target["name"],
        key=key,
    )
