from pkg.flags import EAGER_ON_NPU as REEXPORTED  # noqa: F401
