// The batched multiview rasteriser: parameters and kernel entry points in plain C++ types.
//
// A batch holds B meshes, each seen by K cameras, rendered to B x K images of H x W pixels. Meshes are
// described by rows of `meshes` (B, 4): vertex_start, vertex_count, face_start, face_count into the packed
// `vertices` (NV, 3) and `faces` (NF, 3); a mesh's faces index its own vertices (0 .. vertex_count - 1).
// Meshes that share one topology (4D sequences) all use face_start 0, so the faces are stored once.
//
// Each image goes through three stages: a depth test that keeps, per pixel, the smallest key of
// raster_common.h; a resolve stage that shades the winning fragment into the requested channels; and, with
// a depth channel, a pass that rescales the view-space distances of the covered pixels to [0, 1].
#pragma once

#include <cstdint>

namespace affectvlm {
namespace raster {

struct MeshRange {  // one row of `meshes`
  int64_t vertex_start, vertex_count, face_start, face_count;
};

struct RasterParams {
  int64_t num_meshes = 0;
  int64_t num_views = 0;  // cameras per mesh, K
  int height = 0, width = 0;
  int64_t face_rows = 0;  // rows of `faces`: a bound on every mesh's face_count
  bool cameras_per_mesh = false;  // matrices (B, K, 4, 4) rather than (1, K, 4, 4) shared by all meshes
  bool cull_backfaces = false;
  // Where each channel starts in the C channels of an image, -1 when not rendered; kChannels gives widths.
  int num_channels = 0;
  int depth_channel = -1;      // view-space distance, normalised per view (normalised_depth)
  bool normalise_depth = true;  // false leaves the distance itself
  int normal_channel = -1;     // unit camera-space normal interpolated from vertex normals
  int normal_rgb_channel = -1;  // (normal + 1) / 2: the same normal as a colour in [0, 1]
  int shading_channel = -1;    // ambient + (1 - ambient) * max(0, normal . light)
  int mask_channel = -1;       // 1 where a triangle covers the pixel
  int attribute_channel = -1;  // interpolated per-vertex attributes
  int num_attributes = 0;
  float light[3] = {0.0f, 0.0f, 1.0f};  // unit direction towards the light, camera space
  float ambient = 0.0f;
};

// The channels by name, in the order the Python API lists them (`_C.raster_channels()`): how many image
// planes each takes, and which field of RasterParams records where it starts. The one source of both.
struct Channel {
  const char* name;
  int width;  // kPerAttribute: one plane per attribute
  int RasterParams::*start;
};
constexpr int kPerAttribute = 0;
inline constexpr Channel kChannels[] = {
    {"depth", 1, &RasterParams::depth_channel},
    {"normal", 3, &RasterParams::normal_channel},
    {"shading", 1, &RasterParams::shading_channel},
    {"mask", 1, &RasterParams::mask_channel},
    {"normal_rgb", 3, &RasterParams::normal_rgb_channel},
    {"attributes", kPerAttribute, &RasterParams::attribute_channel},
};

// Pointers on the device that runs the kernel; row-major contiguous arrays.
struct RasterInputs {
  const float* vertices = nullptr;       // (NV, 3)
  const float* normals = nullptr;        // (NV, 3), needed by the normal and shading channels
  const float* attributes = nullptr;     // (NV, num_attributes)
  const int32_t* faces = nullptr;        // (NF, 3)
  const int64_t* meshes = nullptr;       // (B, 4) MeshRange rows
  const float* world_to_clip = nullptr;  // (B or 1, K, 4, 4)
  const float* world_to_view = nullptr;  // (B or 1, K, 4, 4), rigid
};

struct RasterOutputs {
  float* images = nullptr;          // (B, K, C, H, W)
  int32_t* triangle_ids = nullptr;  // (B, K, H, W): the mesh-local face index, -1 for background;
                                    // optional on the CPU
  float* barycentrics = nullptr;    // optional (B, K, 3, H, W), perspective-correct
  int64_t* zbuffer = nullptr;       // (B, K, H, W) workspace of depth keys; CUDA only
};

// Renders the images on `num_threads` threads (the caller's among them).
void render_views_cpu(const RasterParams& params, const RasterInputs& inputs, const RasterOutputs& outputs,
                      int num_threads);

// Area-weighted unit vertex normals of each mesh into normals (NV, 3); vertices of no face get zero.
// Meshes must own disjoint vertex ranges.
void vertex_normals_cpu(const float* vertices, const int32_t* faces, const int64_t* meshes, int64_t num_meshes,
                        float* normals, int num_threads);

#ifdef AFFECTVLM_WITH_CUDA
// Launches on `stream` (a cudaStream_t) and returns without waiting; throws std::runtime_error on a launch
// error.
void render_views_cuda(const RasterParams& params, const RasterInputs& inputs, const RasterOutputs& outputs,
                       void* stream);
#endif

}  // namespace raster
}  // namespace affectvlm
