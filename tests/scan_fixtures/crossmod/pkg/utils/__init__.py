from pkg.utils.common import *  # noqa: F401,F403
