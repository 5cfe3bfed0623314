#include "version.h"

namespace squall {
const char* BuildDescription() { return "squall-native wire v1"; }
}  // namespace squall
