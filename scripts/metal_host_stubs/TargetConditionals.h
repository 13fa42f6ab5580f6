// Stub for the Linux host check of the Metal code (README.md beside it):
// metal-cpp includes it; nothing it tests is needed on the host check.
#pragma once
