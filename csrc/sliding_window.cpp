#include "sliding_window.h"

#include <algorithm>

#include "errors.h"

namespace vqrt {

SlidingWindow::SlidingWindow(int64_t grid_h, int64_t grid_w, int64_t window_h,
                             int64_t window_w, int64_t stride)
    : grid_h_(grid_h), grid_w_(grid_w), stride_(stride) {
  VQRT_CHECK(grid_h >= 1 && grid_w >= 1,
             "the grid must be at least 1x1, got " << grid_h << "x" << grid_w);
  VQRT_CHECK(window_h >= 1 && window_w >= 1,
             "the window must be at least 1x1, got " << window_h << "x" << window_w);
  VQRT_CHECK(stride >= 1 && stride <= window_w,
             "window stride must be in [1, " << window_w << "] (the window width), got "
                                            << stride);
  window_h_ = std::min(window_h, grid_h);
  window_w_ = std::min(window_w, grid_w);
}

WindowPlacement SlidingWindow::place(int64_t index) const {
  VQRT_CHECK(index >= 0 && index < grid_h_ * grid_w_,
             "token index " << index << " is outside the " << grid_h_ << "x" << grid_w_
                            << " grid");
  const int64_t i = index / grid_w_, j = index % grid_w_;
  const int64_t run_begin = j / stride_ * stride_;
  const int64_t run_end = std::min(run_begin + stride_, grid_w_);
  WindowPlacement p;
  p.origin_row = std::clamp(i - window_h_ / 2, int64_t(0), grid_h_ - window_h_);
  p.origin_col = std::max(std::clamp(run_begin - window_w_ / 2, int64_t(0), grid_w_ - window_w_),
                          run_end - window_w_);
  p.local_index = (i - p.origin_row) * window_w_ + (j - p.origin_col);
  p.run_end = i * grid_w_ + run_end;
  return p;
}

void SlidingWindow::gather(const int64_t* grid, int64_t batch, int64_t index, int64_t length,
                           int64_t* out) const {
  VQRT_CHECK(batch >= 0, "batch must be >= 0, got " << batch);
  VQRT_CHECK(length >= 0 && length <= window_size(),
             "window prefix length must be in [0, " << window_size() << "], got " << length);
  const WindowPlacement p = place(index);
  const int64_t cells = grid_h_ * grid_w_;
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t* window = grid + b * cells + p.origin_row * grid_w_ + p.origin_col;
    int64_t* row_out = out + b * length;
    for (int64_t k = 0; k < length; ++k) {
      row_out[k] = window[(k / window_w_) * grid_w_ + k % window_w_];
    }
  }
}

}  // namespace vqrt
