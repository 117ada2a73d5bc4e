//! Single integration-test binary; each module covers one area against real sockets,
//! ptys and child processes.

mod hw_fastboot;
mod hw_images;
mod hw_relay;
mod hw_sim_device;
mod hw_sut;
