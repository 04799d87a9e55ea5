#include "layerstore.h"

const char *ls_version(void)
{
    return LS_VERSION;
}

int ls_sanitized(void)
{
#ifdef LS_SANITIZED
    return 1;
#else
    return 0;
#endif
}
