"""Documentation of the Redis connection options every Redis-facing module shares (workshop_connection.redis_argument_spec)."""


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  redis_host:
    description: Address of the workshop's Redis, as seen from the host.
    type: str
    default: 127.0.0.1
  redis_port:
    description: Port of the workshop's Redis.
    type: int
    default: 6379
  redis_db:
    description: Redis database of the queue.
    type: int
    default: 0
  redis_password:
    description: Password of Redis, where there is no O(env_file) to read it from.
    type: str
  env_file:
    description: The workshop's C(.env); the password is read from its O(redis_password_key).
    type: path
  redis_password_key:
    description: Key of the Redis password in O(env_file).
    type: str
    default: REDIS_PASSWORD
  redis_timeout:
    description: Seconds to wait for Redis to connect or answer.
    type: float
    default: 5.0
notes:
  - Either O(env_file) or O(redis_password), not both.
"""
