# Copyright: (c) 2026, comfy-wrapup contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Documentation of the off-host targets (`archive_targets` entries, workshop_s3.target_argument_spec) of the
modules that take several: retention_enforce and cleanup_workshop."""


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  targets:
    description: The off-host targets (C(archive_targets) entries).
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: The target's name (the run record's key).
        type: str
        required: true
      type:
        description: V(s3) or V(ssh).
        type: str
        choices: [s3, ssh]
        required: true
      endpoint_url:
        description: S3 endpoint URL (empty - AWS).
        type: str
      region:
        description: S3 region.
        type: str
        default: us-east-1
      bucket:
        description: S3 bucket.
        type: str
      prefix:
        description: Key prefix in the bucket.
        type: str
        default: ""
      storage_class:
        description: S3 storage class of the objects (a cold tier, e.g. C(GLACIER_IR), C(STANDARD_IA)).
        type: str
      access_key:
        description: S3 access key (from a vault); unset - C(AWS_ACCESS_KEY_ID) of the host's environment.
        type: str
      secret_key:
        description: S3 secret key (from a vault); unset - C(AWS_SECRET_ACCESS_KEY) of the host's environment.
        type: str
      validate_certs:
        description: Check the endpoint's TLS certificate.
        type: bool
        default: true
      host:
        description: SSH storage host.
        type: str
      port:
        description: SSH port.
        type: int
        default: 22
      user:
        description: SSH user.
        type: str
      path:
        description: Folder on the storage host (absolute).
        type: path
      key_file:
        description: Private key on the workshop host for the storage host.
        type: path
  known_hosts:
    description:
      - For ssh targets, the known_hosts file. A new host key is accepted and stored (in check mode accepted
        for that call only), a changed one refused.
    type: path
"""
