//! `other-world` (a test fixture for the host): a valid component of another world.
//!
//! It implements `world other` of `package other:thing@1.0.0`, which exports only
//! `run: func() -> u32` (it returns 42), and neither imports `mailing:plugin/host` nor
//! exports `mailing:plugin/personalize`. Expected: the host refuses to load it with an
//! error saying it is not a `mailing:plugin` personalizer, and never calls it.
//!
//! No configuration.
#![no_std]

use guest_rt as _;

wit_bindgen::generate!({
    inline: "
        package other:thing@1.0.0;

        world other {
            export run: func() -> u32;
        }
    ",
    world: "other",
});

struct OtherWorld;

impl Guest for OtherWorld {
    fn run() -> u32 {
        42
    }
}

export!(OtherWorld);
