// Stub for the Linux host check of the Metal code (README.md beside it):
// the libdispatch handle types metal-cpp's signatures name.
#pragma once

typedef struct dispatch_queue_s* dispatch_queue_t;
typedef struct dispatch_data_s* dispatch_data_t;
