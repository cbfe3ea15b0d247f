"""One place to import audioop: stdlib up to 3.12, the `audioop-lts` backport from 3.13 on."""
import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # noqa: F401

__all__ = ["audioop"]
