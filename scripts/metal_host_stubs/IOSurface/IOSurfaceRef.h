// Stub for the Linux host check of the Metal code (README.md beside it).
#pragma once

typedef struct __IOSurface* IOSurfaceRef;
