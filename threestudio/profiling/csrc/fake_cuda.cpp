// Do-nothing CUDA device guard and CUDA hooks for a CPU-only build of PyTorch (threestudio/utils/fake_cuda.py).
//
// FakeTensorMode tensors on device "cuda" run a forward on a CPU build, but the autograd engine asks the
// accelerator for its device count and current streams before a backward, and Module.to("cuda") asks the device
// guard. A CPU build registers neither for CUDA, so both abort. These stand-ins answer "one device, default stream,
// nothing to wait for"; no kernel ever runs (fake tensors have no data). The hooks are created once, the first time
// anything asks for them, so this library must be loaded before `import torch`.
#include <ATen/detail/CUDAHooksInterface.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

namespace {
constexpr c10::DeviceType kCuda = c10::DeviceType::CUDA;

struct NoOpCudaGuard final : public c10::impl::DeviceGuardImplInterface {
  c10::DeviceType type() const override { return kCuda; }
  c10::Device exchangeDevice(c10::Device) const override { return c10::Device(kCuda, 0); }
  c10::Device getDevice() const override { return c10::Device(kCuda, 0); }
  void setDevice(c10::Device) const override {}
  void uncheckedSetDevice(c10::Device) const noexcept override {}
  c10::Stream getStream(c10::Device d) const override { return c10::Stream(c10::Stream::DEFAULT, d); }
  c10::Stream getDefaultStream(c10::Device d) const override { return c10::Stream(c10::Stream::DEFAULT, d); }
  c10::Stream exchangeStream(c10::Stream s) const override { return s; }
  c10::DeviceIndex deviceCount() const noexcept override { return 1; }
  void record(void**, const c10::Stream&, const c10::DeviceIndex, const c10::EventFlag) const override {}
  void block(void*, const c10::Stream&) const override {}
  bool queryEvent(void*) const override { return true; }
  void destroyEvent(void*, const c10::DeviceIndex) const noexcept override {}
  bool queryStream(const c10::Stream&) const override { return true; }
  void synchronizeStream(const c10::Stream&) const override {}
};

struct NoOpCudaHooks final : public at::CUDAHooksInterface {
  explicit NoOpCudaHooks(at::CUDAHooksArgs) {}
  void init() const override {}
  bool isBuilt() const override { return true; }
  bool isAvailable() const override { return true; }
  bool hasCUDA() const override { return true; }
  bool hasPrimaryContext(c10::DeviceIndex) const override { return false; }
  c10::DeviceIndex deviceCount() const override { return 1; }
  int getNumGPUs() const override { return 1; }
  c10::DeviceIndex current_device() const override { return 0; }
  c10::DeviceIndex getCurrentDevice() const override { return 0; }
  void setCurrentDevice(c10::DeviceIndex) const override {}
  c10::DeviceIndex exchangeDevice(c10::DeviceIndex) const override { return 0; }
  c10::DeviceIndex maybeExchangeDevice(c10::DeviceIndex) const override { return 0; }
};
}  // namespace

C10_REGISTER_GUARD_IMPL(CUDA, NoOpCudaGuard);

namespace at {
C10_REGISTER_TYPED_CLASS(CUDAHooksRegistry, "CUDAHooks", NoOpCudaHooks)
}  // namespace at

// 1 when these hooks are the ones PyTorch uses (loaded before anything asked for the CUDA hooks).
extern "C" int zeronvs_fake_cuda_active() { return at::detail::getCUDAHooks().hasCUDA() ? 1 : 0; }
