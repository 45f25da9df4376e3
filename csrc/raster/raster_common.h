// Per-vertex and per-pixel rasterisation math shared by the CPU and CUDA kernels.
//
// Both kernels call exactly these functions, and both are compiled without floating-point contraction
// (-ffp-contract=off, nvcc --fmad=false), so coverage, depth keys and triangle ids agree bit for bit.
// The pure-PyTorch reference (affectvlm/ops/reference.py) performs the same operations in the same order.
//
// Conventions:
// - Pixel (column i, row j) has its centre at (i + 0.5, j + 0.5); rows go down the image, NDC y goes up.
// - Screen positions are snapped to fixed point with kSubpixelBits fractional bits, and edge functions are
//   evaluated exactly in 64-bit integers: a pixel centre on an edge shared by two triangles is covered by
//   exactly one of them (top-left rule), whatever the floating-point rounding.
// - A triangle with a vertex behind the camera or in front of the near plane (clip w <= 0 or z < -w), with
//   a vertex outside the guard band, or with zero area is rejected whole (no clipping). Fragments beyond the
//   far plane are discarded per pixel.
// - The depth test keeps the smallest key (float bits of NDC depth in [0, 1]) << 32 | triangle id: the
//   nearest fragment wins, and among equal depths the lowest triangle id.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "common.h"
#include "raster/raster.h"

namespace affectvlm {
namespace raster {

constexpr int kSubpixelBits = 8;
constexpr int64_t kSubpixelScale = int64_t(1) << kSubpixelBits;
constexpr int64_t kHalfPixel = kSubpixelScale / 2;
// |screen coordinate| <= 2^21 pixels keeps fixed-point edge products below 2^61.
constexpr float kGuardBandPixels = 2097152.0f;
constexpr uint64_t kEmptyKey = ~uint64_t(0);

// One vertex seen by one camera.
struct ScreenVertex {
  int64_t x, y;  // position in fixed point (1 / kSubpixelScale pixels)
  float z01;     // NDC depth mapped to [0, 1] between the near and far planes: the depth-test value
  float inv_w;   // 1 / clip w, for perspective-correct interpolation
  float depth;   // distance in front of the camera along its viewing axis (view space -z)
  bool valid;
};

// The triangle after orientation is made positive: slot 0 holds corner 0, slots 1 and 2 hold corners 1 and
// 2, or 2 and 1 when `swapped`. (A flag rather than an index array: GPU code indexing a local array at run
// time spills it to memory.)
struct Triangle {
  int64_t x[3], y[3];
  bool swapped;
  int64_t area;            // twice the area in fixed point, > 0
  float inv_area;          // 1 / float(area)
  int64_t inside_bias[3];  // a pixel is inside edge s when its edge function >= inside_bias[s]
  int col0, col1, row0, row1;  // pixel bounding box, inclusive, clipped to the image
};

// row . (x, y, z, 1) of a row-major 4x4 matrix, summed left to right.
AFFECTVLM_HD float transform_row(const float* row, float x, float y, float z) {
  return ((row[0] * x + row[1] * y) + row[2] * z) + row[3];
}

// world_to_clip and world_to_view are row-major 4x4 matrices; the camera looks along view-space -z.
AFFECTVLM_HD ScreenVertex project_vertex(const float* world_to_clip, const float* world_to_view, const float* p,
                                         int width, int height) {
  ScreenVertex s{};
  const float cx = transform_row(world_to_clip, p[0], p[1], p[2]);
  const float cy = transform_row(world_to_clip + 4, p[0], p[1], p[2]);
  const float cz = transform_row(world_to_clip + 8, p[0], p[1], p[2]);
  const float cw = transform_row(world_to_clip + 12, p[0], p[1], p[2]);
  s.depth = -transform_row(world_to_view + 8, p[0], p[1], p[2]);
  s.valid = false;
  if (!(cw > 0.0f && cz >= -cw)) return s;  // also false for NaN
  s.inv_w = 1.0f / cw;
  const float px = ((cx * s.inv_w) * 0.5f + 0.5f) * static_cast<float>(width);
  const float py = (0.5f - (cy * s.inv_w) * 0.5f) * static_cast<float>(height);
  s.z01 = (cz * s.inv_w) * 0.5f + 0.5f;
  if (!(fabsf(px) <= kGuardBandPixels && fabsf(py) <= kGuardBandPixels)) return s;
  s.x = static_cast<int64_t>(rintf(px * static_cast<float>(kSubpixelScale)));
  s.y = static_cast<int64_t>(rintf(py * static_cast<float>(kSubpixelScale)));
  s.valid = true;
  return s;
}

// Floor division by the subpixel scale; right shifts of negative int64 are arithmetic on every target built.
AFFECTVLM_HD int64_t floor_pixels(int64_t fixed) { return fixed >> kSubpixelBits; }

AFFECTVLM_HD int64_t min3(int64_t a, int64_t b, int64_t c) { return a < b ? (a < c ? a : c) : (b < c ? b : c); }
AFFECTVLM_HD int64_t max3(int64_t a, int64_t b, int64_t c) { return a > b ? (a > c ? a : c) : (b > c ? b : c); }

AFFECTVLM_HD int64_t pixel_centre(int index) { return int64_t(index) * kSubpixelScale + kHalfPixel; }

// Edge function of the edge opposite slot s at a point: >= 0 on the inside for a positive triangle.
AFFECTVLM_HD int64_t edge_function(const Triangle& t, int s, int64_t px, int64_t py) {
  const int a = (s + 1) % 3, b = (s + 2) % 3;
  return (t.x[b] - t.x[a]) * (py - t.y[a]) - (t.y[b] - t.y[a]) * (px - t.x[a]);
}

// The pixels whose centres lie in the triangle's bounding box, clipped to the image; false when there are
// none, which is where most sub-pixel triangles stop.
AFFECTVLM_HD bool pixel_box(const ScreenVertex& v0, const ScreenVertex& v1, const ScreenVertex& v2, int width,
                            int height, Triangle* t) {
  const int64_t col0 = -floor_pixels(-(min3(v0.x, v1.x, v2.x) - kHalfPixel));  // first centre >= min
  const int64_t col1 = floor_pixels(max3(v0.x, v1.x, v2.x) - kHalfPixel);      // last centre <= max
  const int64_t row0 = -floor_pixels(-(min3(v0.y, v1.y, v2.y) - kHalfPixel));
  const int64_t row1 = floor_pixels(max3(v0.y, v1.y, v2.y) - kHalfPixel);
  t->col0 = static_cast<int>(col0 < 0 ? 0 : col0);
  t->col1 = static_cast<int>(col1 > width - 1 ? width - 1 : col1);
  t->row0 = static_cast<int>(row0 < 0 ? 0 : row0);
  t->row1 = static_cast<int>(row1 > height - 1 ? height - 1 : row1);
  return t->col0 <= t->col1 && t->row0 <= t->row1;
}

// Orders the corners so that the area is positive and sets the fill rule's biases. Front faces wind
// counter-clockwise as seen by the camera, which in y-down pixel space is a negative area. False for
// degenerate and culled triangles.
AFFECTVLM_HD bool orient_triangle(const ScreenVertex& v0, const ScreenVertex& v1, const ScreenVertex& v2,
                                  bool cull_backfaces, Triangle* t) {
  const int64_t area = (v1.x - v0.x) * (v2.y - v0.y) - (v1.y - v0.y) * (v2.x - v0.x);
  if (area == 0 || (cull_backfaces && area > 0)) return false;
  const bool swap = area < 0;
  const ScreenVertex& second = swap ? v2 : v1;
  const ScreenVertex& third = swap ? v1 : v2;
  t->swapped = swap;
  t->x[0] = v0.x, t->x[1] = second.x, t->x[2] = third.x;
  t->y[0] = v0.y, t->y[1] = second.y, t->y[2] = third.y;
  t->area = swap ? -area : area;
  t->inv_area = 1.0f / static_cast<float>(t->area);
  // Edge s runs from slot s + 1 to slot s + 2 (mod 3).
  const int64_t dx[3] = {t->x[2] - t->x[1], t->x[0] - t->x[2], t->x[1] - t->x[0]};
  const int64_t dy[3] = {t->y[2] - t->y[1], t->y[0] - t->y[2], t->y[1] - t->y[0]};
  for (int s = 0; s < 3; ++s) {
    const bool top_left = dy[s] < 0 || (dy[s] == 0 && dx[s] > 0);
    t->inside_bias[s] = top_left ? 0 : 1;
  }
  return true;
}

AFFECTVLM_HD bool setup_triangle(const ScreenVertex& v0, const ScreenVertex& v1, const ScreenVertex& v2,
                                 bool cull_backfaces, int width, int height, Triangle* t) {
  return v0.valid && v1.valid && v2.valid && pixel_box(v0, v1, v2, width, height, t) &&
         orient_triangle(v0, v1, v2, cull_backfaces, t);
}

AFFECTVLM_HD bool inside(const Triangle& t, int64_t e0, int64_t e1, int64_t e2) {
  return e0 >= t.inside_bias[0] && e1 >= t.inside_bias[1] && e2 >= t.inside_bias[2];
}

// Screen-space barycentric weights of the three slots, from exact edge functions.
AFFECTVLM_HD void screen_weights(const Triangle& t, int64_t e0, int64_t e1, int64_t e2, float w[3]) {
  w[0] = static_cast<float>(e0) * t.inv_area;
  w[1] = static_cast<float>(e1) * t.inv_area;
  w[2] = static_cast<float>(e2) * t.inv_area;
}

// Per-corner values a0, a1, a2 in the triangle's slot order.
AFFECTVLM_HD void in_slot_order(const Triangle& t, float a0, float a1, float a2, float slots[3]) {
  slots[0] = a0;
  slots[1] = t.swapped ? a2 : a1;
  slots[2] = t.swapped ? a1 : a2;
}

// NDC depth is affine in screen space, so screen weights interpolate it exactly.
AFFECTVLM_HD float fragment_z01(const float w[3], float z0, float z1, float z2) {
  return (w[0] * z0 + w[1] * z1) + w[2] * z2;
}

AFFECTVLM_HD uint32_t float_bits(float value) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(value);
#else
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
#endif
}

// The depth-test key, or kEmptyKey when the fragment lies outside [0, 1] (beyond the far plane).
// A non-negative float's bits order like the float, so the smallest key is the nearest, then lowest id.
AFFECTVLM_HD uint64_t depth_key(float z01, uint32_t triangle) {
  if (!(z01 >= 0.0f && z01 <= 1.0f)) return kEmptyKey;
  if (z01 == 0.0f) z01 = 0.0f;  // -0.0 would sort last
  return (uint64_t(float_bits(z01)) << 32) | triangle;
}

AFFECTVLM_HD uint32_t key_triangle(uint64_t key) { return static_cast<uint32_t>(key & 0xffffffffu); }

// Perspective-correct barycentrics of the corners at a point. The edge function opposite each corner, over
// that corner's clip w, is proportional to its weight; the common factor (twice the area, and its sign for a
// clockwise triangle) cancels in the normalisation, so no orientation or area is needed here.
AFFECTVLM_HD void perspective_barycentrics(const ScreenVertex corner[3], int64_t px, int64_t py, float bary[3]) {
  const ScreenVertex &c0 = corner[0], &c1 = corner[1], &c2 = corner[2];
  const float p0 = static_cast<float>((c2.x - c1.x) * (py - c1.y) - (c2.y - c1.y) * (px - c1.x)) * c0.inv_w;
  const float p1 = static_cast<float>((c0.x - c2.x) * (py - c2.y) - (c0.y - c2.y) * (px - c2.x)) * c1.inv_w;
  const float p2 = static_cast<float>((c1.x - c0.x) * (py - c0.y) - (c1.y - c0.y) * (px - c0.x)) * c2.inv_w;
  const float scale = 1.0f / ((p0 + p1) + p2);
  bary[0] = p0 * scale;
  bary[1] = p1 * scale;
  bary[2] = p2 * scale;
}

AFFECTVLM_HD float interpolate(const float bary[3], float a0, float a1, float a2) {
  return (bary[0] * a0 + bary[1] * a1) + bary[2] * a2;
}

// Depth channel values: 1 at the nearest covered pixel of a view, 0 at the farthest. A view whose range of
// distances is within kFlatDepthRange of its distance (a plane facing the camera, give or take rounding)
// is flat: 1 everywhere.
constexpr float kFlatDepthRange = 1e-5f;

AFFECTVLM_HD float normalised_depth(float distance, float nearest, float farthest) {
  const float span = farthest - nearest;
  const float scale = fabsf(nearest) > fabsf(farthest) ? fabsf(nearest) : fabsf(farthest);
  return span > kFlatDepthRange * scale ? (farthest - distance) / span : 1.0f;
}

AFFECTVLM_HD int64_t camera_index(const RasterParams& p, int64_t mesh, int64_t view) {
  return (p.cameras_per_mesh ? mesh : 0) * p.num_views + view;
}

AFFECTVLM_HD void write_background(const RasterParams& p, const RasterOutputs& out, int64_t image,
                                   int64_t pixel) {
  const int64_t plane = int64_t(p.height) * p.width;
  for (int c = 0; c < p.num_channels; ++c) out.images[(image * p.num_channels + c) * plane + pixel] = 0.0f;
  out.triangle_ids[image * plane + pixel] = -1;
  if (out.barycentrics) {
    for (int i = 0; i < 3; ++i) out.barycentrics[(image * 3 + i) * plane + pixel] = 0.0f;
  }
}

// The world-space normal at a pixel, interpolated from the vertex normals of its triangle's corners.
AFFECTVLM_HD void interpolate_normal(const RasterInputs& in, const int64_t corner_vertex[3], const float bary[3],
                                     float world[3]) {
  for (int a = 0; a < 3; ++a) {
    world[a] = interpolate(bary, in.normals[corner_vertex[0] * 3 + a], in.normals[corner_vertex[1] * 3 + a],
                           in.normals[corner_vertex[2] * 3 + a]);
  }
}

// The unit camera-space normal of an interpolated world normal (zero for a zero normal) and its Lambertian
// shading. Branch-free, so that the CPU kernel can run it over many pixels at once in vector lanes.
AFFECTVLM_HD void shade_normal(const RasterParams& p, const float* world_to_view, const float world[3],
                               float normal[3], float* shading) {
  for (int a = 0; a < 3; ++a) {
    normal[a] = (world_to_view[a * 4] * world[0] + world_to_view[a * 4 + 1] * world[1]) +
                world_to_view[a * 4 + 2] * world[2];
  }
  const float length = sqrtf((normal[0] * normal[0] + normal[1] * normal[1]) + normal[2] * normal[2]);
  const float inverse = 1.0f / (length > 0.0f ? length : 1.0f);
  const float scale = length > 0.0f ? inverse : 0.0f;
  for (int a = 0; a < 3; ++a) normal[a] *= scale;
  const float lambert = (normal[0] * p.light[0] + normal[1] * p.light[1]) + normal[2] * p.light[2];
  *shading = p.ambient + (1.0f - p.ambient) * (lambert > 0.0f ? lambert : 0.0f);
}

// Writes the normal and shading channels that are rendered; `channel` points at the pixel in the image's
// first plane.
AFFECTVLM_HD void write_normal_and_shading(const RasterParams& p, float* channel, int64_t plane,
                                           const float normal[3], float shading) {
  if (p.normal_channel >= 0) {
    for (int a = 0; a < 3; ++a) channel[(p.normal_channel + a) * plane] = normal[a];
  }
  if (p.normal_rgb_channel >= 0) {
    for (int a = 0; a < 3; ++a) channel[(p.normal_rgb_channel + a) * plane] = normal[a] * 0.5f + 0.5f;
  }
  if (p.shading_channel >= 0) channel[p.shading_channel * plane] = shading;
}

AFFECTVLM_HD bool shades_normals(const RasterParams& p) {
  return p.normal_channel >= 0 || p.normal_rgb_channel >= 0 || p.shading_channel >= 0;
}

// Writes every channel of a pixel won by `triangle` of the image's mesh, whose corners are the packed vertices
// `corner_vertex` seen as `corner_screen`, except the normal and shading channels; returns the perspective-
// correct barycentrics, from which those follow (write_fragment).
AFFECTVLM_HD void write_fragment_except_normals(const RasterParams& p, const RasterInputs& in,
                                                const RasterOutputs& out, int64_t image, int64_t pixel,
                                                uint32_t triangle, const int64_t corner_vertex[3],
                                                const ScreenVertex corner_screen[3], float bary[3]) {
  perspective_barycentrics(corner_screen, pixel_centre(static_cast<int>(pixel % p.width)),
                           pixel_centre(static_cast<int>(pixel / p.width)), bary);
  const int64_t plane = int64_t(p.height) * p.width;
  float* channel = out.images + image * p.num_channels * plane + pixel;
  if (p.depth_channel >= 0) {
    channel[p.depth_channel * plane] =
        interpolate(bary, corner_screen[0].depth, corner_screen[1].depth, corner_screen[2].depth);
  }
  if (p.mask_channel >= 0) channel[p.mask_channel * plane] = 1.0f;
  for (int a = 0; a < p.num_attributes; ++a) {
    const int64_t n = p.num_attributes;
    channel[(p.attribute_channel + a) * plane] =
        interpolate(bary, in.attributes[corner_vertex[0] * n + a], in.attributes[corner_vertex[1] * n + a],
                    in.attributes[corner_vertex[2] * n + a]);
  }
  if (out.triangle_ids) out.triangle_ids[image * plane + pixel] = static_cast<int32_t>(triangle);
  if (out.barycentrics) {
    for (int i = 0; i < 3; ++i) out.barycentrics[(image * 3 + i) * plane + pixel] = bary[i];
  }
}

// Shades pixel `pixel` of image `image`, won by `triangle` of the image's mesh, whose corners are the packed
// vertices `corner_vertex` seen as `corner_screen`.
AFFECTVLM_HD void write_fragment(const RasterParams& p, const RasterInputs& in, const RasterOutputs& out,
                                 int64_t image, int64_t pixel, uint32_t triangle, const int64_t corner_vertex[3],
                                 const ScreenVertex corner_screen[3], const float* world_to_view) {
  float bary[3];
  write_fragment_except_normals(p, in, out, image, pixel, triangle, corner_vertex, corner_screen, bary);
  if (!shades_normals(p)) return;
  float world[3], normal[3], shading;
  interpolate_normal(in, corner_vertex, bary, world);
  shade_normal(p, world_to_view, world, normal, &shading);
  const int64_t plane = int64_t(p.height) * p.width;
  write_normal_and_shading(p, out.images + image * p.num_channels * plane + pixel, plane, normal, shading);
}

}  // namespace raster
}  // namespace affectvlm
