/*
 * gyre_emu_launch.h: the emulated cooperative launch, appended to a group source by the
 * emulated device (runtime/src/backend/cuda/emulated.rs). Runs `blocks` x `threads`
 * std::threads, each with its own threadIdx/blockIdx, one barrier and one shared-memory
 * buffer per block, all calling gyre_group_main; returns when every thread returned.
 * EMULATION: every block is resident at once, as a cooperative launch guarantees.
 */
#ifndef GYRE_EMU_LAUNCH_H
#define GYRE_EMU_LAUNCH_H

#include <memory>
#include <vector>

extern "C" int gyre_emu_launch(unsigned blocks, unsigned threads, const gyre_kernel_desc *kernels,
                               unsigned kernel_count) {
    constexpr std::size_t shared_bytes = 48 * 1024;
    std::vector<std::unique_ptr<std::barrier<>>> barriers;
    std::vector<std::unique_ptr<unsigned char[]>> shared;
    for (unsigned b = 0; b < blocks; ++b) {
        barriers.push_back(std::make_unique<std::barrier<>>(static_cast<std::ptrdiff_t>(threads)));
        shared.push_back(std::make_unique<unsigned char[]>(shared_bytes));
    }
    std::vector<std::thread> pool;
    try {
        for (unsigned b = 0; b < blocks; ++b) {
            for (unsigned t = 0; t < threads; ++t) {
                pool.emplace_back([=, &barriers, &shared] {
                    threadIdx = {t, 0, 0};
                    blockIdx = {b, 0, 0};
                    blockDim = {threads, 1, 1};
                    gridDim = {blocks, 1, 1};
                    gyre_emu_barrier = barriers[b].get();
                    gyre_emu_shared = shared[b].get();
                    gyre_emu_shared_used = 0;
                    gyre_group_main(kernels, kernel_count);
                });
            }
        }
    } catch (...) {
        /* Could not start every thread: the blocks already started would wait at their
         * barriers forever, so this is fatal for the emulated grid. */
        std::terminate();
    }
    for (auto &thread : pool) {
        thread.join();
    }
    return 0;
}

#endif /* GYRE_EMU_LAUNCH_H */
