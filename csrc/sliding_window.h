// Sliding-window sampling: the plan that lets a transformer trained on a window_h x window_w grid
// of image tokens sample a larger grid (the paper's scheme, taming's
// scripts/sample_conditional.py). Every backend asks this one planner which tokens to feed; the
// backends only turn those token sequences into logits.
//
// Token (i, j) of a grid_h x grid_w grid (raster index i * grid_w + j) is drawn from the logits
// of its window's raster prefix: the window cells before (i, j) in the window's raster order.
// The window origin is
//
//   row: clamp(i - window_h / 2, 0, grid_h - window_h)
//   col: clamp(j0 - window_w / 2, 0, grid_w - window_w), then at least j1 - window_w
//
// (integer division; upstream writes it as local_i = i for i <= 8, 16 - (H - i) near the bottom,
// else 8, for its 16 x 16 window). [j0, j1) is the run holding j: a row is cut into runs of
// `stride` tokens from its first column (the last run of a row may be shorter; runs never cross
// a row end). A run shares one window, so its tokens are consecutive cells of one window row:
// a backend prefills the prefix of the run's first token once and feeds the rest of the run
// through its KV cache. The second bound keeps the run's last token inside the window; with
// stride 1 it never binds, and the origin is upstream's exactly.
//
// A grid smaller than the window along one axis (a 4 x 40 grid, window 8 x 8) uses a window of
// the grid's extent along that axis (4 x 8).
#pragma once
#include <cstdint>

namespace vqrt {

// Where token `index` of the grid is drawn from.
struct WindowPlacement {
  int64_t origin_row;   // the window's top-left cell in the grid
  int64_t origin_col;
  int64_t local_index;  // the token's raster index in the window = its window prefix length
  int64_t run_end;      // grid raster index one past the run: tokens [index, run_end) use this
                        // window at local indices local_index, local_index + 1, ...
};

class SlidingWindow {
 public:
  // window_h x window_w: the training grid; stride in [1, window_w]. Throws vqrt::Error.
  SlidingWindow(int64_t grid_h, int64_t grid_w, int64_t window_h, int64_t window_w,
                int64_t stride);

  // index in [0, grid_h * grid_w).
  WindowPlacement place(int64_t index) const;

  // The first `length` cells (raster order) of the window of token `index`, for each row of a
  // batch: grid [batch, grid_h * grid_w] -> out [batch, length], length <= window_size().
  // Image tokens take length = local_index (the prefix); a spatial condition with the grid's
  // geometry takes length = window_size() (the whole cropped window).
  void gather(const int64_t* grid, int64_t batch, int64_t index, int64_t length,
              int64_t* out) const;

  int64_t grid_h() const { return grid_h_; }
  int64_t grid_w() const { return grid_w_; }
  int64_t window_h() const { return window_h_; }  // min(requested, grid_h)
  int64_t window_w() const { return window_w_; }  // min(requested, grid_w)
  int64_t window_size() const { return window_h_ * window_w_; }
  int64_t stride() const { return stride_; }

 private:
  int64_t grid_h_, grid_w_, window_h_, window_w_, stride_;
};

}  // namespace vqrt
