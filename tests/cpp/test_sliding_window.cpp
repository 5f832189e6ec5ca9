// The sliding-window planner: upstream's origins (taming's sample_conditional.py, its
// branches spelled out for a 16 x 16 window), runs of the stride mode, the edge cases of grid
// geometry, gather, and the errors.
#include <cstdint>
#include <vector>

#include "check.h"
#include "errors.h"
#include "sliding_window.h"

using vqrt::SlidingWindow;
using vqrt::WindowPlacement;

// upstream's window-local coordinate along one axis of extent n for its 16-cell window.
static int64_t upstream_local(int64_t i, int64_t n) {
  if (i <= 8) return i;
  if (n - i < 8) return 16 - (n - i);
  return 8;
}

TEST(stride_one_is_upstreams_window) {
  for (int64_t h : {16, 17, 23, 40}) {
    for (int64_t w : {16, 19, 37}) {
      SlidingWindow plan(h, w, 16, 16, 1);
      for (int64_t index = 0; index < h * w; ++index) {
        const int64_t i = index / w, j = index % w;
        const WindowPlacement p = plan.place(index);
        CHECK_EQ(p.origin_row, i - upstream_local(i, h));
        CHECK_EQ(p.origin_col, j - upstream_local(j, w));
        CHECK_EQ(p.local_index, upstream_local(i, h) * 16 + upstream_local(j, w));
        CHECK_EQ(p.run_end, index + 1);
      }
    }
  }
}

TEST(grid_equal_to_the_window_is_plain_raster_order) {
  SlidingWindow plan(8, 8, 8, 8, 1);
  for (int64_t index = 0; index < 64; ++index) {
    const WindowPlacement p = plan.place(index);
    CHECK_EQ(p.origin_row, 0);
    CHECK_EQ(p.origin_col, 0);
    CHECK_EQ(p.local_index, index);
  }
}

TEST(one_row_taller_grid_moves_the_window_once) {
  SlidingWindow plan(9, 8, 8, 8, 1);
  for (int64_t i = 0; i < 9; ++i) {
    const WindowPlacement p = plan.place(i * 8 + 3);
    CHECK_EQ(p.origin_row, i <= 4 ? 0 : 1);  // clamp(i - 4, 0, 1)
    CHECK_EQ(p.origin_col, 0);
    CHECK_EQ(p.local_index, (i - p.origin_row) * 8 + 3);
  }
}

TEST(grid_narrower_than_the_window_uses_the_grid_width) {
  SlidingWindow plan(40, 4, 8, 8, 1);
  CHECK_EQ(plan.window_h(), 8);
  CHECK_EQ(plan.window_w(), 4);
  const WindowPlacement p = plan.place(20 * 4 + 2);  // (20, 2)
  CHECK_EQ(p.origin_row, 16);
  CHECK_EQ(p.origin_col, 0);
  CHECK_EQ(p.local_index, 4 * 4 + 2);
}

// Every run: [first, run_end) in one row, at most `stride` long, one window, consecutive local
// indices inside it; the runs tile the grid.
TEST(runs_share_one_window_and_tile_the_grid) {
  for (int64_t stride : {1, 2, 3, 4, 5, 8}) {
    for (int64_t w : {8, 11, 16}) {
      const int64_t h = 10;
      SlidingWindow plan(h, w, 8, 8, stride);
      int64_t runs = 0;
      for (int64_t first = 0; first < h * w;) {
        const WindowPlacement head = plan.place(first);
        CHECK(head.run_end > first);
        CHECK(head.run_end - first <= stride);
        CHECK_EQ((head.run_end - 1) / w, first / w);  // never crosses a row end
        CHECK_EQ(first % w % stride, 0);                // runs start at multiples of the stride
        for (int64_t index = first; index < head.run_end; ++index) {
          const WindowPlacement p = plan.place(index);
          CHECK_EQ(p.origin_row, head.origin_row);
          CHECK_EQ(p.origin_col, head.origin_col);
          CHECK_EQ(p.run_end, head.run_end);
          CHECK_EQ(p.local_index, head.local_index + (index - first));
          CHECK(index % w - p.origin_col < 8);  // inside the window
          CHECK(index % w >= p.origin_col);
        }
        first = head.run_end;
        ++runs;
      }
      CHECK_EQ(runs, h * ((w + stride - 1) / stride));
    }
  }
}

TEST(a_long_run_moves_the_window_right_to_hold_it) {
  // Window 8 wide, stride 6, grid 20 wide: the run [6, 12) starts at origin clamp(6 - 4) = 2,
  // which would leave column 11 outside (2 + 8 = 10): the origin becomes 12 - 8 = 4.
  SlidingWindow plan(8, 20, 8, 8, 6);
  const WindowPlacement p = plan.place(6);
  CHECK_EQ(p.origin_col, 4);
  CHECK_EQ(p.local_index, 2);
  CHECK_EQ(p.run_end, 12);
  const WindowPlacement last = plan.place(19);  // run [18, 20): origin clamp(14, 0, 12) = 12
  CHECK_EQ(last.origin_col, 12);
  CHECK_EQ(last.run_end, 20);
}

TEST(gather_copies_the_window_in_raster_order) {
  const int64_t h = 5, w = 6;
  std::vector<int64_t> grid(2 * h * w);
  for (size_t k = 0; k < grid.size(); ++k) grid[k] = static_cast<int64_t>(k);
  SlidingWindow plan(h, w, 3, 4, 1);
  const int64_t index = 3 * w + 4;  // (3, 4): origin (clamp(2, 0, 2), clamp(2, 0, 2)) = (2, 2)
  const WindowPlacement p = plan.place(index);
  CHECK_EQ(p.origin_row, 2);
  CHECK_EQ(p.origin_col, 2);
  CHECK_EQ(p.local_index, 1 * 4 + 2);
  std::vector<int64_t> out(2 * p.local_index, -1);
  plan.gather(grid.data(), 2, index, p.local_index, out.data());
  const std::vector<int64_t> row0 = {14, 15, 16, 17, 20, 21};
  for (int64_t k = 0; k < p.local_index; ++k) {
    CHECK_EQ(out[k], row0[k]);
    CHECK_EQ(out[p.local_index + k], row0[k] + h * w);
  }
  std::vector<int64_t> whole(plan.window_size());
  plan.gather(grid.data(), 1, index, plan.window_size(), whole.data());
  CHECK_EQ(whole.back(), 4 * w + 5);
}

TEST(bad_arguments_name_the_value) {
  CHECK_THROWS(SlidingWindow(8, 8, 8, 8, 0), vqrt::Error, "window stride must be in [1, 8]");
  CHECK_THROWS(SlidingWindow(8, 8, 8, 8, 9), vqrt::Error, "got 9");
  CHECK_THROWS(SlidingWindow(0, 8, 8, 8, 1), vqrt::Error, "at least 1x1, got 0x8");
  CHECK_THROWS(SlidingWindow(8, 8, 8, 0, 1), vqrt::Error, "window must be at least 1x1");
  SlidingWindow plan(9, 9, 8, 8, 1);
  CHECK_THROWS(plan.place(81), vqrt::Error, "token index 81 is outside the 9x9 grid");
  CHECK_THROWS(plan.place(-1), vqrt::Error, "token index -1");
  int64_t grid[81] = {}, out[65];
  CHECK_THROWS(plan.gather(grid, 1, 0, 65, out), vqrt::Error, "in [0, 64], got 65");
}

int main() { return check::run_tests(); }
