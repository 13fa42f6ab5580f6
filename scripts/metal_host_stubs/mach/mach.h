// Stub for the Linux host check of the Metal code (README.md beside it):
// the Mach types metal-cpp's signatures name.
#pragma once

typedef int kern_return_t;
typedef unsigned int mach_port_t;
typedef mach_port_t task_id_token_t;
