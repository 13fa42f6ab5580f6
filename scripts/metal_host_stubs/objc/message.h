// Stub for the Linux host check of the Metal code (README.md beside it):
// the message-send entry points metal-cpp casts to typed function pointers.
#pragma once
#include <objc/runtime.h>

extern "C" {
void objc_msgSend(void);
void objc_msgSend_fpret(void);
void objc_msgSend_stret(void);
}
