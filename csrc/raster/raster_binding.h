// `_C.render_views`: argument checks and CPU/CUDA dispatch for the rasteriser (see raster.h).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include <pybind11/pybind11.h>

namespace affectvlm {
namespace raster {

void render_views_binding(pybind11::handle vertices, pybind11::handle faces, pybind11::handle meshes,
                          pybind11::handle world_to_clip, pybind11::handle world_to_view, pybind11::handle images,
                          pybind11::object triangle_ids, const std::vector<std::string>& channels,
                          pybind11::object normals, pybind11::object attributes, pybind11::object barycentrics,
                          pybind11::object zbuffer, bool normalise_depth, bool cull_backfaces,
                          std::array<float, 3> light, float ambient, int num_threads, uintptr_t stream);

// `_C.raster_channels`: {name: number of image planes, None for one per attribute}, from kChannels (raster.h).
pybind11::dict raster_channels();

// `_C.vertex_normals`: the CPU normals of packed meshes (see raster.h); GPU batches use torch.
void vertex_normals_binding(pybind11::handle vertices, pybind11::handle faces, pybind11::handle meshes,
                            pybind11::handle normals, int num_threads);

}  // namespace raster
}  // namespace affectvlm
