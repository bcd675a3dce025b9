"""What stops a quantization run before it writes anything: a message for the user, exit status 2."""


class QuantizeError(Exception):
    """A model, folder or version that cannot be used; the message says which and why, in one line."""
