"""The attributes every read-only module of the workshop has: check mode runs as a real run does, no diff."""


class ModuleDocFragment:
    READ_ONLY = r"""
attributes:
  check_mode:
    support: full
    description: Read-only; it runs the same in check mode.
  diff_mode:
    support: none
    description: Returns no diff.
"""
