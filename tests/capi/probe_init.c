/* Starting the embedded Python where it cannot start (PYTHONHOME wrong) must give a status, never an
 * abort, and keep giving it. usage: probe_init BUNDLE_DIR -> prints "<status name> | <message>" lines */
#include <stdio.h>

#include "dsocr.h"

int main(int argc, char **argv) {
    dsocr_model *m = NULL;
    dsocr_status a = dsocr_init();
    printf("%s | %s\n", dsocr_status_name(a), dsocr_last_error());
    dsocr_status b = dsocr_model_create(argc > 1 ? argv[1] : ".", NULL, &m);
    printf("%s | %s\n", dsocr_status_name(b), dsocr_last_error());
    printf("format %d\n", dsocr_bundle_format_version());
    dsocr_model_destroy(m);
    return 0;
}
