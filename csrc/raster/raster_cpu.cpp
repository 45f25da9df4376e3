// CPU kernel. Per image: the mesh's vertices are projected once; the depth test runs eight small triangles at
// a time through vector lanes (larger ones walk their pixel box one by one) into a z-buffer that stays in
// the thread's cache; a resolve pass shades the winning fragments; the depth channel is rescaled.
//
// Work is shared out as whole images where there are enough of them for every thread. Fewer images (one
// mesh's three views, say) are split: each of `parts` workers depth-tests a share of an image's faces into
// its own z-buffer, then each takes a band of rows, merges the z-buffers there (keys are minima, so the order
// does not matter) and resolves it.
//
// Plain threads that block when out of work, rather than OpenMP: libgomp's default spin-waiting stalls a
// call for whole scheduler time slices when the cores are shared (on the 2-core CI machine under load, a
// 3-view call took 24 ms median with OpenMP against 1.8 ms on one thread).
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

#include "cpu_code.h"
#include "raster/raster.h"
#include "raster/raster_common.h"

namespace affectvlm {
namespace raster {
namespace {

#define AFFECTVLM_INLINE inline __attribute__((always_inline))

// Eight 32-bit lanes (GCC/Clang vector types): one AVX2 register, or two SSE2 registers on the baseline.
constexpr int kLanes = 8;
typedef int32_t LaneInts __attribute__((vector_size(4 * kLanes)));
typedef float LaneFloats __attribute__((vector_size(4 * kLanes)));
constexpr LaneInts kLaneBit = {1, 2, 4, 8, 16, 32, 64, 128};

// These helpers are always inlined, so returning a 32-byte vector never crosses a call boundary whose ABI
// would differ between the baseline and AVX2 code.
#pragma GCC diagnostic ignored "-Wpsabi"
AFFECTVLM_INLINE LaneInts lane_min(const LaneInts& a, const LaneInts& b) { return a < b ? a : b; }
AFFECTVLM_INLINE LaneInts lane_max(const LaneInts& a, const LaneInts& b) { return a > b ? a : b; }
// Bit i set where lane i of a comparison result is true.
AFFECTVLM_INLINE int lane_bits(const LaneInts& mask) {
  LaneInts bits = mask & kLaneBit;  // a tree of ORs across lanes, by halves
  bits |= __builtin_shuffle(bits, LaneInts{4, 5, 6, 7, 0, 1, 2, 3});
  bits |= __builtin_shuffle(bits, LaneInts{2, 3, 0, 1, 2, 3, 0, 1});
  bits |= __builtin_shuffle(bits, LaneInts{1, 0, 1, 0, 1, 0, 1, 0});
  return bits[0];
}

// Fixed-point positions fit 32 bits (the guard band keeps them within 2^29); a vertex that cannot be drawn
// gets an x no position takes.
constexpr int32_t kInvalidPosition = -(1 << 30);
// Corners at most this far apart (64 pixels) keep every product of the vectorised set-up within 32 bits.
constexpr int32_t kSmallExtent = 64 * kSubpixelScale;

// A mesh's vertices seen by one camera (project_vertex), one array per field, so that the depth test loads
// eight triangles' corners at once.
struct ProjectedMesh {
  std::vector<int32_t> x, y;  // kInvalidPosition in x: the vertex cannot be drawn
  std::vector<float> z01, inv_w, depth;

  ScreenVertex vertex(int32_t v) const {
    return ScreenVertex{x[v], y[v], z01[v], inv_w[v], depth[v], x[v] != kInvalidPosition};
  }
};

// rintf, lane by lane: below 2^23 in magnitude, adding and subtracting 2^23 (with the value's sign) rounds
// to the nearest integer, ties to even; from 2^23 on every float is an integer already.
AFFECTVLM_INLINE LaneFloats lane_rint(const LaneFloats& v) {
  constexpr float kTwo23 = 8388608.0f;
  const LaneFloats magic = v < 0.0f ? LaneFloats{} - kTwo23 : LaneFloats{} + kTwo23;
  return (v < kTwo23) & (v > -kTwo23) ? (v + magic) - magic : v;
}

AFFECTVLM_INLINE LaneFloats lane_row(const float* row, const LaneFloats& x, const LaneFloats& y,
                                     const LaneFloats& z) {
  return ((row[0] * x + row[1] * y) + row[2] * z) + row[3];  // transform_row
}

// project_vertex for eight vertices at once, in the same operations and order, so in the same roundings.
AFFECTVLM_INLINE void project_eight(const RasterParams& p, const float* vertices, const float* clip,
                                    const float* view, int64_t first, ProjectedMesh& screen) {
  LaneFloats x, y, z;
  for (int lane = 0; lane < kLanes; ++lane) {
    x[lane] = vertices[(first + lane) * 3];
    y[lane] = vertices[(first + lane) * 3 + 1];
    z[lane] = vertices[(first + lane) * 3 + 2];
  }
  const LaneFloats cx = lane_row(clip, x, y, z), cy = lane_row(clip + 4, x, y, z);
  const LaneFloats cz = lane_row(clip + 8, x, y, z), cw = lane_row(clip + 12, x, y, z);
  const LaneFloats depth = -lane_row(view + 8, x, y, z);
  const LaneInts in_front = (cw > 0.0f) & (cz >= -cw);
  const LaneFloats inv_w = 1.0f / cw;
  const LaneFloats px = ((cx * inv_w) * 0.5f + 0.5f) * static_cast<float>(p.width);
  const LaneFloats py = (0.5f - (cy * inv_w) * 0.5f) * static_cast<float>(p.height);
  const LaneFloats z01 = (cz * inv_w) * 0.5f + 0.5f;
  const LaneInts valid = in_front & (px <= kGuardBandPixels) & (px >= -kGuardBandPixels) &
                         (py <= kGuardBandPixels) & (py >= -kGuardBandPixels);
  // Converted only where valid: elsewhere the value may be NaN or beyond 32 bits.
  const LaneFloats fixed_x = valid ? lane_rint(px * static_cast<float>(kSubpixelScale)) : LaneFloats{};
  const LaneFloats fixed_y = valid ? lane_rint(py * static_cast<float>(kSubpixelScale)) : LaneFloats{};
  const LaneInts out_x = valid ? __builtin_convertvector(fixed_x, LaneInts) : LaneInts{} + kInvalidPosition;
  const LaneInts out_y = __builtin_convertvector(fixed_y, LaneInts);
  const LaneFloats out_z01 = in_front ? z01 : LaneFloats{}, out_inv_w = in_front ? inv_w : LaneFloats{};
  std::memcpy(&screen.x[first], &out_x, sizeof out_x);
  std::memcpy(&screen.y[first], &out_y, sizeof out_y);
  std::memcpy(&screen.z01[first], &out_z01, sizeof out_z01);
  std::memcpy(&screen.inv_w[first], &out_inv_w, sizeof out_inv_w);
  std::memcpy(&screen.depth[first], &depth, sizeof depth);
}

AFFECTVLM_INLINE void project_one(const RasterParams& p, const float* vertices, const float* clip,
                                  const float* view, int64_t v, ProjectedMesh& screen) {
  const ScreenVertex s = project_vertex(clip, view, vertices + v * 3, p.width, p.height);
  screen.x[v] = s.valid ? static_cast<int32_t>(s.x) : kInvalidPosition;
  screen.y[v] = s.valid ? static_cast<int32_t>(s.y) : 0;
  screen.z01[v] = s.z01;
  screen.inv_w[v] = s.inv_w;
  screen.depth[v] = s.depth;
}

// Depth test of one triangle over its pixel box, with incremental 64-bit edge functions.
void rasterize_triangle(const RasterParams& p, const Triangle& t, const float z[3], uint32_t triangle,
                        uint64_t* zbuffer) {
  // Edge s changes by step_x[s] per pixel to the right.
  int64_t step_x[3];
  for (int s = 0; s < 3; ++s) step_x[s] = -(t.y[(s + 2) % 3] - t.y[(s + 1) % 3]) * kSubpixelScale;
  const int64_t x0 = pixel_centre(t.col0);
  for (int row = t.row0; row <= t.row1; ++row) {
    const int64_t y = pixel_centre(row);
    int64_t e0 = edge_function(t, 0, x0, y), e1 = edge_function(t, 1, x0, y), e2 = edge_function(t, 2, x0, y);
    uint64_t* line = zbuffer + int64_t(row) * p.width;
    for (int col = t.col0; col <= t.col1; ++col, e0 += step_x[0], e1 += step_x[1], e2 += step_x[2]) {
      if (!inside(t, e0, e1, e2)) continue;
      float w[3];
      screen_weights(t, e0, e1, e2, w);
      const uint64_t key = depth_key(fragment_z01(w, z[0], z[1], z[2]), triangle);
      line[col] = std::min(line[col], key);
    }
  }
}

// One triangle through the general path: setup_triangle, then its whole pixel box.
AFFECTVLM_INLINE void depth_test_triangle(const RasterParams& p, const ProjectedMesh& screen,
                                          const int32_t* faces, int64_t f, uint64_t* zbuffer) {
  const ScreenVertex a = screen.vertex(faces[f * 3]);
  const ScreenVertex b = screen.vertex(faces[f * 3 + 1]);
  const ScreenVertex c = screen.vertex(faces[f * 3 + 2]);
  Triangle t;
  if (!setup_triangle(a, b, c, p.cull_backfaces, p.width, p.height, &t)) return;
  float z[3];
  in_slot_order(t, a.z01, b.z01, c.z01, z);
  rasterize_triangle(p, t, z, static_cast<uint32_t>(f), zbuffer);
}

// Eight triangles at once, one per vector lane. The lanes whose pixel box is at most 2 x 2 pixels and whose
// corners lie within kSmallExtent of each other (nearly all of a face mesh's triangles at these image sizes)
// are set up and tested at the four pixels of their box in 32-bit integer and float vectors; the others go
// through depth_test_triangle. Every value is the one setup_triangle and rasterize_triangle compute: the
// 32-bit edge functions are the same integers, and converting them to float rounds them alike.
AFFECTVLM_INLINE void depth_test_eight(const RasterParams& p, const ProjectedMesh& screen, const int32_t* faces,
                                       int64_t first, uint64_t* zbuffer) {
  LaneInts x[3], y[3];
  LaneFloats z[3];
  for (int lane = 0; lane < kLanes; ++lane) {
    for (int corner = 0; corner < 3; ++corner) {
      const int32_t v = faces[(first + lane) * 3 + corner];
      x[corner][lane] = screen.x[v];
      y[corner][lane] = screen.y[v];
      z[corner][lane] = screen.z01[v];
    }
  }
  const LaneInts valid = (x[0] != kInvalidPosition) & (x[1] != kInvalidPosition) & (x[2] != kInvalidPosition);
  const LaneInts min_x = lane_min(x[0], lane_min(x[1], x[2])), max_x = lane_max(x[0], lane_max(x[1], x[2]));
  const LaneInts min_y = lane_min(y[0], lane_min(y[1], y[2])), max_y = lane_max(y[0], lane_max(y[1], y[2]));
  // pixel_box: the first pixel centre at or after the minimum, the last at or before the maximum.
  const LaneInts col0 = lane_max(-((int32_t(kHalfPixel) - min_x) >> kSubpixelBits), LaneInts{});
  const LaneInts col1 = lane_min((max_x - int32_t(kHalfPixel)) >> kSubpixelBits, LaneInts{} + (p.width - 1));
  const LaneInts row0 = lane_max(-((int32_t(kHalfPixel) - min_y) >> kSubpixelBits), LaneInts{});
  const LaneInts row1 = lane_min((max_y - int32_t(kHalfPixel)) >> kSubpixelBits, LaneInts{} + (p.height - 1));
  const LaneInts boxed = valid & (col0 <= col1) & (row0 <= row1);
  const LaneInts quad = boxed & (col1 - col0 <= 1) & (row1 - row0 <= 1) & (max_x - min_x <= kSmallExtent) &
                        (max_y - min_y <= kSmallExtent);
  for (int others = lane_bits(boxed & ~quad); others != 0; others &= others - 1) {
    depth_test_triangle(p, screen, faces, first + __builtin_ctz(others), zbuffer);
  }
  if (lane_bits(quad) == 0) return;

  // orient_triangle, on corners made relative to corner 0 (and zero in the other lanes) so that no product
  // can overflow.
  LaneInts rx[3], ry[3];
  for (int corner = 0; corner < 3; ++corner) {
    rx[corner] = quad ? x[corner] - x[0] : LaneInts{};
    ry[corner] = quad ? y[corner] - y[0] : LaneInts{};
  }
  const LaneInts signed_area = rx[1] * ry[2] - ry[1] * rx[2];
  LaneInts kept = quad & (signed_area != 0);
  if (p.cull_backfaces) kept &= signed_area < 0;
  const LaneInts swap = signed_area < 0;
  const LaneInts sx[3] = {rx[0], swap ? rx[2] : rx[1], swap ? rx[1] : rx[2]};
  const LaneInts sy[3] = {ry[0], swap ? ry[2] : ry[1], swap ? ry[1] : ry[2]};
  const LaneFloats sz[3] = {z[0], swap ? z[2] : z[1], swap ? z[1] : z[2]};
  const LaneInts area = swap ? -signed_area : signed_area;
  const LaneFloats inv_area = 1.0f / __builtin_convertvector(kept ? area : LaneInts{} + 1, LaneFloats);

  // Edge functions at the box's first pixel centre, relative to corner 0 like the positions.
  const LaneInts px = col0 * int32_t(kSubpixelScale) + int32_t(kHalfPixel) - (quad ? x[0] : LaneInts{});
  const LaneInts py = row0 * int32_t(kSubpixelScale) + int32_t(kHalfPixel) - (quad ? y[0] : LaneInts{});
  LaneInts edge[3], step_x[3], step_y[3], bias[3];
  for (int s = 0; s < 3; ++s) {
    const int a = (s + 1) % 3, b = (s + 2) % 3;
    const LaneInts dx = sx[b] - sx[a], dy = sy[b] - sy[a];
    edge[s] = dx * (py - sy[a]) - dy * (px - sx[a]);
    step_x[s] = -dy * int32_t(kSubpixelScale);
    step_y[s] = dx * int32_t(kSubpixelScale);
    bias[s] = ((dy < 0) | ((dy == 0) & (dx > 0))) ? LaneInts{} : LaneInts{} + 1;
  }
  const LaneInts second_col = col1 > col0, second_row = row1 > row0;
  const LaneInts pixel0 = row0 * p.width + col0;
  for (int corner_of_box = 0; corner_of_box < 4; ++corner_of_box) {
    const bool right = corner_of_box & 1, down = corner_of_box & 2;
    LaneInts e[3];
    for (int s = 0; s < 3; ++s) e[s] = edge[s] + (right ? step_x[s] : LaneInts{}) + (down ? step_y[s] : LaneInts{});
    LaneInts covered = kept & (e[0] >= bias[0]) & (e[1] >= bias[1]) & (e[2] >= bias[2]);
    if (right) covered &= second_col;
    if (down) covered &= second_row;
    if (lane_bits(covered) == 0) continue;
    const LaneFloats w0 = __builtin_convertvector(e[0], LaneFloats) * inv_area;
    const LaneFloats w1 = __builtin_convertvector(e[1], LaneFloats) * inv_area;
    const LaneFloats w2 = __builtin_convertvector(e[2], LaneFloats) * inv_area;
    const LaneFloats depth = (w0 * sz[0] + w1 * sz[1]) + w2 * sz[2];  // fragment_z01
    const int64_t offset = (down ? p.width : 0) + (right ? 1 : 0);
    for (int lanes = lane_bits(covered); lanes != 0; lanes &= lanes - 1) {
      const int lane = __builtin_ctz(lanes);
      uint64_t& key = zbuffer[pixel0[lane] + offset];
      key = std::min(key, depth_key(depth[lane], static_cast<uint32_t>(first + lane)));
    }
  }
}

// Projects the mesh of `image` and depth-tests its faces [first_face, end_face) into `zbuffer` (H x W keys,
// filled with kEmptyKey first): eight vertices and triangles at a time in vector lanes (kLanes8), or one by one.
template <bool kLanes8>
AFFECTVLM_INLINE void project_and_test_body(const RasterParams& p, const RasterInputs& in, int64_t image,
                                            int64_t first_face, int64_t end_face, ProjectedMesh& screen,
                                            uint64_t* zbuffer) {
  const int64_t mesh_index = image / p.num_views;
  const MeshRange mesh = reinterpret_cast<const MeshRange*>(in.meshes)[mesh_index];
  const int64_t camera = camera_index(p, mesh_index, image % p.num_views);
  const size_t count = static_cast<size_t>(mesh.vertex_count);
  for (auto* field : {&screen.x, &screen.y}) field->resize(count);
  for (auto* field : {&screen.z01, &screen.inv_w, &screen.depth}) field->resize(count);
  const float* vertices = in.vertices + mesh.vertex_start * 3;
  const float *clip = in.world_to_clip + camera * 16, *view = in.world_to_view + camera * 16;
  int64_t v = 0;
  if (kLanes8) {
    for (; v + kLanes <= mesh.vertex_count; v += kLanes) project_eight(p, vertices, clip, view, v, screen);
  }
  for (; v < mesh.vertex_count; ++v) project_one(p, vertices, clip, view, v, screen);

  std::fill_n(zbuffer, int64_t(p.height) * p.width, kEmptyKey);
  const int32_t* faces = in.faces + mesh.face_start * 3;
  int64_t f = first_face;
  if (kLanes8) {
    for (; f + kLanes <= end_face; f += kLanes) depth_test_eight(p, screen, faces, f, zbuffer);
  }
  for (; f < end_face; ++f) depth_test_triangle(p, screen, faces, f, zbuffer);
}

// The projection and depth test, compiled for x86-64-v3 and for the baseline (cpu_code.h). The baseline goes
// one by one: in SSE2, without a 32-bit vector multiply and with eight lanes in two registers, the lanes
// were slower than the scalar code (173 against 120 ms for 64 x 3 views of the 20k face at 224 px).
using ProjectAndTest = void (*)(const RasterParams&, const RasterInputs&, int64_t, int64_t, int64_t,
                                ProjectedMesh&, uint64_t*);

void project_and_test_baseline(const RasterParams& p, const RasterInputs& in, int64_t image, int64_t first_face,
                               int64_t end_face, ProjectedMesh& screen, uint64_t* zbuffer) {
  project_and_test_body<false>(p, in, image, first_face, end_face, screen, zbuffer);
}

#if AFFECTVLM_HAS_X86_64_V3
AFFECTVLM_X86_64_V3 void project_and_test_x86_64_v3(const RasterParams& p, const RasterInputs& in, int64_t image,
                                                    int64_t first_face, int64_t end_face, ProjectedMesh& screen,
                                                    uint64_t* zbuffer) {
  project_and_test_body<true>(p, in, image, first_face, end_face, screen, zbuffer);
}
#endif

ProjectAndTest project_and_test_for(CpuCode code) {
#if AFFECTVLM_HAS_X86_64_V3
  if (code == CpuCode::X86_64_V3) return project_and_test_x86_64_v3;
#endif
  return project_and_test_baseline;
}

const ProjectAndTest project_and_test = project_and_test_for(cpu_code());

// Rows [row0, row1) of an image.
struct Band {
  int row0, row1;
};

// The nearest and farthest distance of the covered pixels, for the depth channel's normalisation.
struct DistanceRange {
  float nearest = INFINITY, farthest = -INFINITY;

  void add(float distance) {
    nearest = std::min(nearest, distance);
    farthest = std::max(farthest, distance);
  }
  void add(const DistanceRange& other) {
    nearest = std::min(nearest, other.nearest);
    farthest = std::max(farthest, other.farthest);
  }
};

// Background values for a band, plane by plane (what write_background does pixel by pixel).
void clear_band(const RasterParams& p, const RasterOutputs& out, int64_t image, Band band) {
  const int64_t plane = int64_t(p.height) * p.width, begin = int64_t(band.row0) * p.width;
  const int64_t pixels = int64_t(band.row1 - band.row0) * p.width;
  for (int c = 0; c < p.num_channels; ++c) {
    std::fill_n(out.images + (image * p.num_channels + c) * plane + begin, pixels, 0.0f);
  }
  if (out.triangle_ids) std::fill_n(out.triangle_ids + image * plane + begin, pixels, -1);
  if (out.barycentrics) {
    for (int i = 0; i < 3; ++i) std::fill_n(out.barycentrics + (image * 3 + i) * plane + begin, pixels, 0.0f);
  }
}

// Pixels whose normal and shading channels wait for one pass over all of them (shade_pending), which the
// compiler vectorises: one pixel at a time, the square root and division of each normal stall in a chain.
struct PendingNormals {
  std::vector<int64_t> pixel;
  std::vector<float> x, y, z;  // the interpolated world normal, then the camera-space unit normal
  std::vector<float> shading;

  void reserve(int64_t count) {
    const size_t size = static_cast<size_t>(count);
    if (pixel.size() >= size) return;
    pixel.resize(size);
    for (auto* field : {&x, &y, &z, &shading}) field->resize(size);
  }
};

void shade_pending(const RasterParams& p, const RasterOutputs& out, int64_t image, const float* world_to_view,
                   PendingNormals& pending, int64_t count) {
  const RasterParams params = p;  // local copies, which the loop's stores cannot alias
  float view[12];
  std::copy_n(world_to_view, 12, view);
  float *x = pending.x.data(), *y = pending.y.data(), *z = pending.z.data(), *shading = pending.shading.data();
  for (int64_t i = 0; i < count; ++i) {
    const float world[3] = {x[i], y[i], z[i]};
    float normal[3];
    shade_normal(params, view, world, normal, &shading[i]);
    x[i] = normal[0];
    y[i] = normal[1];
    z[i] = normal[2];
  }
  const int64_t plane = int64_t(p.height) * p.width;
  float* first_plane = out.images + image * p.num_channels * plane;
  for (int64_t i = 0; i < count; ++i) {
    const float normal[3] = {x[i], y[i], z[i]};
    write_normal_and_shading(params, first_plane + pending.pixel[i], plane, normal, shading[i]);
  }
}

// Shades every pixel of the band that a triangle won; returns the range of their distances.
DistanceRange resolve_band(const RasterParams& p, const RasterInputs& in, const RasterOutputs& out, int64_t image,
                           Band band, const ProjectedMesh& screen, const uint64_t* zbuffer,
                           PendingNormals& pending) {
  clear_band(p, out, image, band);
  const int64_t mesh_index = image / p.num_views;
  const MeshRange mesh = reinterpret_cast<const MeshRange*>(in.meshes)[mesh_index];
  const float* view = in.world_to_view + camera_index(p, mesh_index, image % p.num_views) * 16;
  const int32_t* faces = in.faces + mesh.face_start * 3;
  const int64_t plane = int64_t(p.height) * p.width;
  const float* depth = p.depth_channel < 0 ? nullptr
                                           : out.images + (image * p.num_channels + p.depth_channel) * plane;
  const int64_t band_begin = int64_t(band.row0) * p.width, band_end = int64_t(band.row1) * p.width;
  const bool shades = shades_normals(p);
  if (shades) pending.reserve(band_end - band_begin);
  int64_t pending_count = 0;
  DistanceRange range;
  for (int64_t pixel = band_begin; pixel < band_end; ++pixel) {
    const uint64_t key = zbuffer[pixel];
    if (key == kEmptyKey) continue;
    const uint32_t triangle = key_triangle(key);
    int64_t corner_vertex[3];
    ScreenVertex corner_screen[3];
    for (int i = 0; i < 3; ++i) {
      const int32_t local = faces[int64_t(triangle) * 3 + i];
      corner_vertex[i] = mesh.vertex_start + local;
      corner_screen[i] = screen.vertex(local);
    }
    float bary[3];
    write_fragment_except_normals(p, in, out, image, pixel, triangle, corner_vertex, corner_screen, bary);
    if (shades) {
      float world[3];
      interpolate_normal(in, corner_vertex, bary, world);
      pending.pixel[pending_count] = pixel;
      pending.x[pending_count] = world[0];
      pending.y[pending_count] = world[1];
      pending.z[pending_count] = world[2];
      ++pending_count;
    }
    if (depth != nullptr) range.add(depth[pixel]);
  }
  if (shades) shade_pending(p, out, image, view, pending, pending_count);
  return range;
}

// Rescales the band's covered distances to [0, 1] over the image's range; no branch per pixel, so that the
// compiler vectorises it.
void normalise_band_depth(const RasterParams& p, const RasterOutputs& out, int64_t image, Band band,
                          const uint64_t* zbuffer, DistanceRange range) {
  if (p.depth_channel < 0 || !p.normalise_depth) return;
  float* depth = out.images + (image * p.num_channels + p.depth_channel) * int64_t(p.height) * p.width;
  for (int64_t pixel = int64_t(band.row0) * p.width; pixel < int64_t(band.row1) * p.width; ++pixel) {
    const float normalised = normalised_depth(depth[pixel], range.nearest, range.farthest);
    depth[pixel] = zbuffer[pixel] != kEmptyKey ? normalised : depth[pixel];
  }
}

// One worker's projection and z-buffer.
struct ImageScratch {
  ProjectedMesh screen;
  std::vector<uint64_t> zbuffer;
  PendingNormals pending;
};

// Projects the mesh of `image` into `scratch` and depth-tests share `part` of `parts` of its faces into the
// scratch's z-buffer.
void test_share_of_faces(const RasterParams& p, const RasterInputs& in, int64_t image, int64_t part, int64_t parts,
                         ImageScratch& scratch) {
  const int64_t faces = reinterpret_cast<const MeshRange*>(in.meshes)[image / p.num_views].face_count;
  scratch.zbuffer.resize(static_cast<size_t>(int64_t(p.height) * p.width));
  project_and_test(p, in, image, faces * part / parts, faces * (part + 1) / parts, scratch.screen,
                   scratch.zbuffer.data());
}

void render_whole_image(const RasterParams& p, const RasterInputs& in, const RasterOutputs& out, int64_t image,
                        ImageScratch& scratch) {
  test_share_of_faces(p, in, image, 0, 1, scratch);
  const Band all{0, p.height};
  const DistanceRange range =
      resolve_band(p, in, out, image, all, scratch.screen, scratch.zbuffer.data(), scratch.pending);
  normalise_band_depth(p, out, image, all, scratch.zbuffer.data(), range);
}

// Runs work(claim) on up to num_threads threads, the caller's among them; each claims item numbers with
// claim() until one is >= count.
template <typename Work>
void share_out(int64_t count, int num_threads, Work work) {
  std::atomic<int64_t> next{0};
  auto claim = [&next] { return next++; };
  const int64_t helpers = std::min<int64_t>(std::max(num_threads, 1), count) - 1;
  std::vector<std::thread> threads;
  for (int64_t t = 0; t < helpers; ++t) threads.emplace_back([&] { work(claim); });
  work(claim);
  for (std::thread& thread : threads) thread.join();
}

// Work is cut into at least this many items per thread, so that a thread that starts late (on a busy core)
// leaves the others little to wait for.
constexpr int64_t kItemsPerThread = 2;

// Counts finished items of one stage of one image; a worker that needs them all waits, yielding its core.
struct StageCounter {
  std::atomic<int64_t> finished{0};

  void finish() { finished.fetch_add(1, std::memory_order_release); }
  void wait_for(int64_t count) const {
    while (finished.load(std::memory_order_acquire) < count) std::this_thread::yield();
  }
};

// The images split into `parts` each. Items are claimed in stage order: every part's depth test of its share
// of the faces into its own z-buffer, then every band's merge of the image's z-buffers and resolve, then every
// band's depth normalisation over the image's range. An item waits for its image's previous stage, which
// earlier claims have all started, so no worker waits on an item nobody has.
void render_split_images(const RasterParams& p, const RasterInputs& in, const RasterOutputs& out, int64_t images,
                         int64_t parts, int num_threads) {
  const int64_t per_stage = images * parts;  // item i of a stage: image i / parts, part i % parts
  std::vector<ImageScratch> scratch(static_cast<size_t>(per_stage));
  std::vector<DistanceRange> ranges(static_cast<size_t>(per_stage));
  std::vector<StageCounter> tested(static_cast<size_t>(images)), resolved(static_cast<size_t>(images));
  auto band_of = [&](int64_t part) {
    return Band{static_cast<int>(p.height * part / parts), static_cast<int>(p.height * (part + 1) / parts)};
  };
  share_out(3 * per_stage, num_threads, [&](auto claim) {
    for (int64_t claimed = claim(); claimed < 3 * per_stage; claimed = claim()) {
      const int64_t stage = claimed / per_stage, item = claimed % per_stage;
      const int64_t image = item / parts, part = item % parts, first = image * parts;
      if (stage == 0) {
        test_share_of_faces(p, in, image, part, parts, scratch[item]);
        tested[image].finish();
      } else if (stage == 1) {
        tested[image].wait_for(parts);
        const Band band = band_of(part);
        uint64_t* merged = scratch[first].zbuffer.data();  // the image's first z-buffer takes the merge
        for (int64_t other = first + 1; other < first + parts; ++other) {
          const uint64_t* keys = scratch[other].zbuffer.data();
          for (int64_t pixel = int64_t(band.row0) * p.width; pixel < int64_t(band.row1) * p.width; ++pixel) {
            merged[pixel] = std::min(merged[pixel], keys[pixel]);
          }
        }
        ranges[item] =
            resolve_band(p, in, out, image, band, scratch[first].screen, merged, scratch[item].pending);
        resolved[image].finish();
      } else {
        resolved[image].wait_for(parts);
        DistanceRange range;
        for (int64_t other = first; other < first + parts; ++other) range.add(ranges[other]);
        normalise_band_depth(p, out, image, band_of(part), scratch[first].zbuffer.data(), range);
      }
    }
  });
}

void mesh_vertex_normals(const float* vertices, const int32_t* faces, const MeshRange& mesh, float* normals) {
  float* own = normals + mesh.vertex_start * 3;
  std::fill_n(own, mesh.vertex_count * 3, 0.0f);
  const float* own_vertices = vertices + mesh.vertex_start * 3;
  for (int64_t f = mesh.face_start; f < mesh.face_start + mesh.face_count; ++f) {
    const float* a = own_vertices + faces[f * 3] * 3;
    const float* b = own_vertices + faces[f * 3 + 1] * 3;
    const float* c = own_vertices + faces[f * 3 + 2] * 3;
    const float ab[3] = {b[0] - a[0], b[1] - a[1], b[2] - a[2]};
    const float ac[3] = {c[0] - a[0], c[1] - a[1], c[2] - a[2]};
    const float normal[3] = {ab[1] * ac[2] - ab[2] * ac[1], ab[2] * ac[0] - ab[0] * ac[2],
                             ab[0] * ac[1] - ab[1] * ac[0]};  // twice the area, so larger faces weigh more
    for (int corner = 0; corner < 3; ++corner) {
      float* target = own + faces[f * 3 + corner] * 3;
      for (int axis = 0; axis < 3; ++axis) target[axis] += normal[axis];
    }
  }
  for (int64_t v = 0; v < mesh.vertex_count; ++v) {
    float* n = own + v * 3;
    const float length = std::sqrt(n[0] * n[0] + n[1] * n[1] + n[2] * n[2]);
    const float scale = length > 0.0f ? 1.0f / length : 0.0f;
    for (int axis = 0; axis < 3; ++axis) n[axis] *= scale;
  }
}

// Fresh output memory is faulted in as the kernel first writes it, one 4 KiB page at a time, and for a batch
// that writes hundreds of megabytes the faults cost as much as the rendering. Asking for transparent huge pages
// over the 2 MiB-aligned interior of each output (taken where the system grants them on request) makes the
// faults 512 times fewer. Advice only: where it is refused nothing changes.
void advise_huge_pages(const void* data, int64_t bytes) {
#ifdef __linux__
  constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
  const uintptr_t start = reinterpret_cast<uintptr_t>(data);
  const uintptr_t begin = (start + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t end = (start + static_cast<uintptr_t>(bytes)) & ~(kHugePage - 1);
  if (data != nullptr && end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#endif
}

void advise_huge_pages_for_outputs(const RasterParams& p, const RasterOutputs& out) {
  const int64_t pixels = p.num_meshes * p.num_views * p.height * p.width;
  advise_huge_pages(out.images, pixels * p.num_channels * int64_t(sizeof(float)));
  advise_huge_pages(out.triangle_ids, pixels * int64_t(sizeof(int32_t)));
  advise_huge_pages(out.barycentrics, pixels * 3 * int64_t(sizeof(float)));
}

// How many parts each image is split into: enough for kItemsPerThread items a thread, but at most kMaxParts,
// and only while every part's z-buffer, all kept until the image is resolved, fits kSplitBytes.
constexpr int64_t kMaxParts = 4;
constexpr int64_t kSplitBytes = int64_t(256) << 20;

int64_t parts_per_image(const RasterParams& p, int64_t images, int num_threads) {
  const int64_t wanted_items = kItemsPerThread * num_threads;
  if (num_threads <= 1 || images >= wanted_items) return 1;
  const int64_t parts = std::min({(wanted_items + images - 1) / images, kMaxParts, int64_t(p.height)});
  const int64_t zbuffer_bytes = int64_t(p.height) * p.width * int64_t(sizeof(uint64_t));
  return images * parts * zbuffer_bytes <= kSplitBytes ? parts : 1;
}

}  // namespace

void render_views_cpu(const RasterParams& params, const RasterInputs& inputs, const RasterOutputs& outputs,
                      int num_threads) {
  advise_huge_pages_for_outputs(params, outputs);
  const int64_t images = params.num_meshes * params.num_views;
  const int64_t parts = parts_per_image(params, images, num_threads);
  if (parts > 1) {
    render_split_images(params, inputs, outputs, images, parts, num_threads);
    return;
  }
  share_out(images, num_threads, [&](auto claim) {
    ImageScratch scratch;
    for (int64_t image = claim(); image < images; image = claim()) {
      render_whole_image(params, inputs, outputs, image, scratch);
    }
  });
}

void vertex_normals_cpu(const float* vertices, const int32_t* faces, const int64_t* meshes, int64_t num_meshes,
                        float* normals, int num_threads) {
  const auto* rows = reinterpret_cast<const MeshRange*>(meshes);
  share_out(num_meshes, num_threads, [&](auto claim) {
    for (int64_t mesh = claim(); mesh < num_meshes; mesh = claim()) {
      mesh_vertex_normals(vertices, faces, rows[mesh], normals);
    }
  });
}

}  // namespace raster
}  // namespace affectvlm
