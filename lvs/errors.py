"""The one error type for configuration mistakes.

Its text is what ipvsadm prints for the same mistake, so the CLI can print it
as is; `status` is ipvsadm's exit code for it (2 for usage errors, 255 for
errors the kernel reports, 1 for a missing service in a listing).
"""


class ConfigError(Exception):
    def __init__(self, message, status=255):
        super().__init__(message)
        self.message = message
        self.status = status

    def __str__(self):
        return self.message
