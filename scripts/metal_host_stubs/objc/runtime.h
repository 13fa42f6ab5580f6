// Stub for the Linux host check of the Metal code (README.md beside it):
// the Objective-C runtime names metal-cpp uses, declarations only.
#pragma once
#include <cstddef>

typedef struct objc_class* Class;
// metal-cpp's NS::Object derives from it, so it must be complete.
struct objc_object {
  Class isa;
};
typedef struct objc_object* id;
typedef struct objc_selector* SEL;
typedef struct objc_object Protocol;
typedef bool BOOL;
#define YES true
#define NO false

extern "C" {
SEL sel_registerName(const char* name);
Class objc_lookUpClass(const char* name);
id objc_getClass(const char* name);
Protocol* objc_getProtocol(const char* name);
}
