#include <libxml/xmlversion.h>
/* Debian's libxml2 is built with ICU, so encoding.h would pull the system's ICU headers into this
 * module, and their enums clash with Foundation's own copy of ICU (_FoundationICU) in any module that
 * sees both. virtgate never touches an encoding handler's fields (the only ICU-dependent layout), so
 * the headers are read as for a libxml2 without ICU. */
#undef LIBXML_ICU_ENABLED
#include <libxml/parser.h>
#include <libxml/tree.h>
