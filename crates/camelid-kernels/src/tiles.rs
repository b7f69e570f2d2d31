//! The AMX tile registers' shape, shared by the quantized (`quant::x86::amx`) and 16-bit
//! (`f16gemm::amx`) tile kernels: `ldtilecfg` and `tilerelease`, written as `asm!` (Rust's
//! AMX intrinsics are unstable).

use std::arch::asm;

/// The 64-byte block `ldtilecfg` reads (palette 1).
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// Shapes tmm0–7 as `rows[t]` rows of 64 bytes each.
///
/// # Safety
/// The CPU has AMX and the process holds its state (`cpu_features::amx`); every row count is
/// 1..=16.
pub(crate) unsafe fn configure(rows: [u8; 8]) {
    configure_shapes(rows, [64; 8])
}

/// Shapes tmm0–7 as `rows[t]` rows of `colsb[t]` bytes each.
///
/// # Safety
/// As [`configure`]; every byte width is 4..=64, a multiple of 4.
pub(crate) unsafe fn configure_shapes(rows: [u8; 8], colsb: [u16; 8]) {
    let mut c = TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        colsb: [0; 16],
        rows: [0; 16],
    };
    for (t, &r) in rows.iter().enumerate() {
        debug_assert!((1..=16).contains(&r), "tile {t}: {r} rows");
        debug_assert!((4..=64).contains(&colsb[t]) && colsb[t].is_multiple_of(4));
        c.colsb[t] = colsb[t];
        c.rows[t] = r;
    }
    asm!("ldtilecfg [{0}]", in(reg) &c, options(nostack, readonly));
}

/// Gives the tile state back (a thread's saved context shrinks to its usual size).
///
/// # Safety
/// As [`configure`].
pub(crate) unsafe fn release() {
    asm!("tilerelease", options(nostack, nomem));
}
