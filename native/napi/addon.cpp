// Module entry: every napi/<group>.cpp registers its functions through a static Registrar.
#include "common.h"

namespace sffn {
namespace napi {
void register_all(Napi::Env env, Napi::Object exports);
}
}  // namespace sffn

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  sffn::napi::register_all(env, exports);
  return exports;
}

NODE_API_MODULE(NODE_GYP_MODULE_NAME, Init)
