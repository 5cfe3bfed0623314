// The only file that includes napi.h: it binds the plain C++ core to JavaScript.
#include <napi.h>

#include "version.h"

namespace {
Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("wireVersion", Napi::Number::New(env, squall::kWireVersion));
  exports.Set("build", Napi::String::New(env, squall::BuildDescription()));
  return exports;
}
}  // namespace

NODE_API_MODULE(squall_native, Init)
