#include "layerstore.h"

const char *ls_build_get_version(void)
{
    return LS_VERSION;
}

int ls_build_get_flags(void)
{
    int flags = 0;
#ifdef LS_SANITIZED
    flags |= LS_BUILD_SANITIZED;
#endif
#ifdef LS_TEST_HOOKS
    flags |= LS_BUILD_TEST_HOOKS;
#endif
    return flags;
}
