from pkg.jit import jit as fast


@fast
def m_alias(x):
    return x
