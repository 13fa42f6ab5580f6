// Stub for the Linux host check of the Metal code (README.md beside it):
// the CoreFoundation types metal-cpp's Foundation headers name.
#pragma once
#include <math.h> // the real header includes it; metal-cpp relies on INFINITY
#include <stdint.h>

typedef double CFTimeInterval;
typedef long CFIndex;
typedef unsigned long CFTypeID;
typedef unsigned long CFOptionFlags;
typedef const void* CFTypeRef;
typedef const struct __CFString* CFStringRef;
typedef struct __CFRunLoop* CFRunLoopRef;
