// CUDA generalised advantage estimation (mpo_fast/reference/gae.py is the math): one warp per
// sequence, walking T backwards in tiles of 32 lanes x 8 steps.
// Memory access is coalesced (issue 18): a tile is loaded with lane l reading scan positions
// l, l + 32, ..., l + 224 (consecutive lanes, consecutive times: one 128-byte line per fp32 load
// instruction instead of 8 lines touched by lanes 8 elements apart), then transposed through
// shared memory (1 KB per array, padded against bank conflicts) so that each lane owns 8
// consecutive steps for the scan below; results go back through shared memory the same way.
//
// Each step is an affine map of the state (nv = next valid value, A = next valid advantage):
//   valid t:    nv' = v_t,  A' = gamma nv + gamma lam A + (r_t - v_t)     padding t: identity
// i.e. x -> M x + c with M = [[p, 0], [q, s]], c = (c, d), closed under composition. Per tile:
//   1. every lane composes the maps of its 8 steps (latest time first),
//   2. a warp prefix scan (5 shuffle rounds) gives each lane the map of all later steps in the tile,
//   3. each lane applies it to the carry and replays its 8 steps with the plain recurrence,
//   4. lane 31 (earliest times) holds the carry for the next tile.
// The next tile's loads are issued before the current tile is computed, so a lone warp (small B)
// keeps one tile of loads in flight. The torch loop it replaces launches ~6 kernels per time step.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/dtype.h"

namespace mpo_fast {
namespace {

constexpr int kItems = 8;
constexpr int kTile = 32 * kItems;
constexpr unsigned kFullMask = 0xffffffffu;

// One [B, T] input: element (b, t) is at p + b * sb + t * st (in elements), of dtype code `dtype`.
struct RowsDev {
  const void* p;
  int dtype;
  int64_t sb, st;
};

template <typename Acc>
__device__ __forceinline__ Acc load_elem(const RowsDev& in, int64_t b, int64_t t) {
  const int64_t i = b * in.sb + t * in.st;
  switch (in.dtype) {
    case kFloat32: return static_cast<Acc>(static_cast<const float*>(in.p)[i]);
    case kFloat64: return static_cast<Acc>(static_cast<const double*>(in.p)[i]);
    case kBFloat16: return static_cast<Acc>(__bfloat162float(static_cast<const __nv_bfloat16*>(in.p)[i]));
    case kFloat16: return static_cast<Acc>(__half2float(static_cast<const __half*>(in.p)[i]));
    case kBool: return static_cast<const uint8_t*>(in.p)[i] ? Acc(1) : Acc(0);
    default: return Acc(0);
  }
}

template <typename Acc>
struct AffineMap {
  Acc p, q, s, c, d;
};

template <typename Acc>
__device__ __forceinline__ AffineMap<Acc> identity_map() {
  return {Acc(1), Acc(0), Acc(1), Acc(0), Acc(0)};
}

// `first` is applied first (the later time steps), `then` after it: the result is then o first.
template <typename Acc>
__device__ __forceinline__ AffineMap<Acc> compose(const AffineMap<Acc>& first, const AffineMap<Acc>& then) {
  return {then.p * first.p, then.q * first.p + then.s * first.q, then.s * first.s, then.p * first.c + then.c,
          then.q * first.c + then.s * first.d + then.d};
}

template <typename Acc>
__device__ __forceinline__ AffineMap<Acc> shfl_up_map(const AffineMap<Acc>& m, int delta) {
  return {__shfl_up_sync(kFullMask, m.p, delta), __shfl_up_sync(kFullMask, m.q, delta),
          __shfl_up_sync(kFullMask, m.s, delta), __shfl_up_sync(kFullMask, m.c, delta),
          __shfl_up_sync(kFullMask, m.d, delta)};
}

template <typename Acc>
struct TileRegs {
  Acc r[kItems], v[kItems];
  bool ok[kItems];
};

// Coalesced: register i of lane `lane` holds scan position i * 32 + lane of tile j, i.e. time
// T - j * kTile - 1 - (i * 32 + lane).
template <typename Acc>
__device__ __forceinline__ void load_tile(TileRegs<Acc>& regs, const RowsDev& rew, const RowsDev& val,
                                          const RowsDev& msk, int64_t b, int64_t T, int64_t j, int lane) {
  const int64_t t_top = T - j * kTile - 1 - lane;
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int64_t t = t_top - static_cast<int64_t>(i) * 32;
    const bool ok = t >= 0 && load_elem<Acc>(msk, b, t) != Acc(0);
    regs.ok[i] = ok;
    regs.r[i] = ok ? load_elem<Acc>(rew, b, t) : Acc(0);  // padding is never read: it may hold NaN
    regs.v[i] = ok ? load_elem<Acc>(val, b, t) : Acc(0);
  }
}

// Shared-memory index of scan position `pos`: one pad word per 32 keeps both the strided
// (i * 32 + lane) and the run (lane * 8 + i) access patterns free of bank conflicts.
__device__ __forceinline__ int padded(int pos) { return pos + (pos >> 5); }
constexpr int kPadded = kTile + kTile / 32;

// The loaded (strided) tile -> each lane's run of 8 consecutive scan positions lane * 8 + i.
template <typename Acc>
__device__ __forceinline__ void to_runs(const TileRegs<Acc>& in, Acc* sr, Acc* sv, unsigned char* sok,
                                        TileRegs<Acc>& out, int lane) {
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int k = padded(i * 32 + lane);
    sr[k] = in.r[i];
    sv[k] = in.v[i];
    sok[k] = in.ok[i];
  }
  __syncwarp();
#pragma unroll
  for (int i = 0; i < kItems; ++i) {
    const int k = padded(lane * kItems + i);
    out.r[i] = sr[k];
    out.v[i] = sv[k];
    out.ok[i] = sok[k] != 0;
  }
  __syncwarp();  // every lane has read before the buffers are reused for the outputs
}

template <typename Acc>
__global__ void __launch_bounds__(32) gae_kernel(RowsDev rew, RowsDev val, RowsDev msk, int64_t T, Acc gamma,
                                                 Acc gamma_lam, Acc* __restrict__ adv_out,
                                                 Acc* __restrict__ ret_out) {
  __shared__ Acc s_r[kPadded];  // rewards in, advantages out
  __shared__ Acc s_v[kPadded];  // values in, returns out
  __shared__ unsigned char s_ok[kPadded];
  const int64_t b = blockIdx.x;
  const int lane = threadIdx.x;
  Acc* adv = adv_out + b * T;
  Acc* ret = ret_out + b * T;
  const int64_t num_tiles = (T + kTile - 1) / kTile;
  Acc nv_carry = 0, adv_carry = 0;
  TileRegs<Acc> raw, cur;
  load_tile(raw, rew, val, msk, b, T, 0, lane);
  for (int64_t j = 0; j < num_tiles; ++j) {
    to_runs(raw, s_r, s_v, s_ok, cur, lane);
    if (j + 1 < num_tiles) load_tile(raw, rew, val, msk, b, T, j + 1, lane);  // in flight during the scan
    AffineMap<Acc> f = identity_map<Acc>();
#pragma unroll
    for (int i = 0; i < kItems; ++i)
      if (cur.ok[i]) f = compose(f, AffineMap<Acc>{Acc(0), gamma, gamma_lam, cur.v[i], cur.r[i] - cur.v[i]});
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const AffineMap<Acc> earlier = shfl_up_map(f, off);
      if (lane >= off) f = compose(earlier, f);
    }
    AffineMap<Acc> before = shfl_up_map(f, 1);  // maps of every later step in the tile
    if (lane == 0) before = identity_map<Acc>();
    Acc nv = before.p * nv_carry + before.c;
    Acc a = before.q * nv_carry + before.s * adv_carry + before.d;
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const int k = padded(lane * kItems + i);
      if (cur.ok[i]) {  // positions past t = 0 are never ok
        const Acc delta = cur.r[i] + gamma * nv - cur.v[i];
        a = delta + gamma_lam * a;
        nv = cur.v[i];
        s_r[k] = a;
        s_v[k] = a + cur.v[i];
      } else {
        s_r[k] = Acc(0);
        s_v[k] = Acc(0);
      }
    }
    __syncwarp();
    const int64_t t_top = T - j * kTile - 1 - lane;
#pragma unroll
    for (int i = 0; i < kItems; ++i) {  // coalesced stores, as the loads
      const int64_t t = t_top - static_cast<int64_t>(i) * 32;
      if (t < 0) break;
      const int k = padded(i * 32 + lane);
      adv[t] = s_r[k];
      ret[t] = s_v[k];
    }
    __syncwarp();  // stores have read the buffers before the next tile's to_runs writes them
    nv_carry = __shfl_sync(kFullMask, nv, 31);
    adv_carry = __shfl_sync(kFullMask, a, 31);
  }
}

}  // namespace
}  // namespace mpo_fast

// C ABI: rewards, values, mask as (device ptr, dtype code, stride_b, stride_t in elements); outputs
// contiguous [B, T] of acc_dtype (float32, or float64). Returns the launch's cudaError_t.
extern "C" cudaError_t mpo_cuda_gae(const void* rew, int rew_dtype, int64_t rew_sb, int64_t rew_st, const void* val,
                                    int val_dtype, int64_t val_sb, int64_t val_st, const void* msk, int msk_dtype,
                                    int64_t msk_sb, int64_t msk_st, int64_t B, int64_t T, double gamma, double lam,
                                    int acc_dtype, void* adv, void* ret, cudaStream_t stream) {
  using namespace mpo_fast;
  if (B == 0 || T == 0) return cudaSuccess;
  if (B > 2147483647LL) return cudaErrorInvalidValue;
  const RowsDev r{rew, rew_dtype, rew_sb, rew_st}, v{val, val_dtype, val_sb, val_st}, m{msk, msk_dtype, msk_sb, msk_st};
  const dim3 grid(static_cast<unsigned>(B)), block(32);
  if (acc_dtype == kFloat64)
    gae_kernel<double><<<grid, block, 0, stream>>>(r, v, m, T, gamma, gamma * lam, static_cast<double*>(adv),
                                                   static_cast<double*>(ret));
  else if (acc_dtype == kFloat32)
    gae_kernel<float><<<grid, block, 0, stream>>>(r, v, m, T, static_cast<float>(gamma),
                                                  static_cast<float>(gamma * lam), static_cast<float*>(adv),
                                                  static_cast<float*>(ret));
  else
    return cudaErrorInvalidValue;
  return cudaGetLastError();
}
