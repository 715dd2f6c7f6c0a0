//! Location tokens straight from generated ids (the CPU twin of the CUDA kernel in
//! `src/gpu/kernels/loc_tokens.cu`).
//!
//! Florence-2 writes coordinates as `<loc_0>`…`<loc_999>`, whose ids are contiguous
//! in tokenizer.json. Working on ids instead of decoded text finds every location
//! token, its bin and its coordinate without a regex, for a whole batch at once.
//! A run of consecutive location tokens alternates x, y, x, y…; the parse type groups
//! a run into boxes (4), quad boxes (8) or polygon points (2). A run whose length is
//! not a multiple of the group leaves one incomplete (malformed) group at its end,
//! flagged so the caller can drop it as the reference post-processor does. Labels
//! (the text between runs) are stitched on by the caller.
//!
//! The `#[repr(C)]` structs are shared byte for byte with the kernel.

pub use super::location::LOCATION_BINS;

/// Why a token batch cannot be parsed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LocIdsError {
    #[error("token batch has {ids} ids, expected {items} sequences × {max_len} (padded length)")]
    IdsLength {
        ids: usize,
        items: usize,
        max_len: usize,
    },
    #[error("sequence {index} has length {length}, more than the padded length {max_len}")]
    SequenceLength {
        index: usize,
        length: u32,
        max_len: usize,
    },
    #[error("sequence {index} has image size {width}x{height}; both must be finite and > 0")]
    ImageSize {
        index: usize,
        width: f32,
        height: f32,
    },
    #[error("sequence {index} has group length {group_len}; allowed: 0 (none), 2 (polygon points), 4 (boxes), 8 (quad boxes)")]
    GroupLength { index: usize, group_len: u32 },
    #[error("padded length {max_len} is too large; at most {max} tokens per sequence")]
    TooLong { max_len: usize, max: usize },
}

/// How the parse type groups a run of location tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocationGrouping {
    /// Text tasks: location tokens are reported but not grouped.
    None,
    /// Polygon vertices: (x, y) pairs.
    PolygonPoints,
    /// Boxes: x1, y1, x2, y2.
    Boxes,
    /// Quad boxes: x1, y1, …, x4, y4.
    QuadBoxes,
}

impl LocationGrouping {
    /// Tokens per group, as the kernel takes it (0 = no grouping).
    pub fn group_len(self) -> u32 {
        match self {
            LocationGrouping::None => 0,
            LocationGrouping::PolygonPoints => 2,
            LocationGrouping::Boxes => 4,
            LocationGrouping::QuadBoxes => 8,
        }
    }
}

/// Per sequence: the image the coordinates refer to, the real (unpadded) length and
/// the grouping.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SequenceInfo {
    pub image_width: f32,
    pub image_height: f32,
    pub length: u32,
    pub group_len: u32,
}

impl SequenceInfo {
    pub fn new(
        image_width: f32,
        image_height: f32,
        length: u32,
        grouping: LocationGrouping,
    ) -> Self {
        SequenceInfo {
            image_width,
            image_height,
            length,
            group_len: grouping.group_len(),
        }
    }
}

/// What one token position holds. For non-location tokens (and padding) `bin` is -1
/// and every other field is the "none" value of [`LocationToken::NONE`].
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocationToken {
    /// 0..=999, or -1 when the token is not a location token.
    pub bin: i32,
    /// Index of the first token of the run this token belongs to, or -1.
    pub run_start: i32,
    /// Number of location tokens in the run, or 0.
    pub run_len: i32,
    /// Index of this token's group within the run (position / group length), or -1
    /// when the sequence is not grouped.
    pub group: i32,
    /// 0 for x (even position in the run), 1 for y (odd position).
    pub axis: u32,
    /// 1 when this token's group is complete, 0 when it is a malformed tail (or ungrouped).
    pub complete: u32,
    /// `(bin + 0.5) * size / 1000` in pixels, size being the image width for x and
    /// height for y (Microsoft's processor; floats, not truncated).
    pub coord_px: f32,
    /// `(bin + 0.5) / 1000`, in [0, 1].
    pub coord_norm: f32,
}

impl LocationToken {
    pub const NONE: LocationToken = LocationToken {
        bin: -1,
        run_start: -1,
        run_len: 0,
        group: -1,
        axis: 0,
        complete: 0,
        coord_px: 0.0,
        coord_norm: 0.0,
    };

    pub fn is_location(&self) -> bool {
        self.bin >= 0
    }
}

/// Counts per sequence, so callers can size their outputs and report malformed output.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LocationSummary {
    pub location_tokens: u32,
    pub runs: u32,
    pub complete_groups: u32,
    pub malformed_groups: u32,
}

/// A batch of generated ids, padded to `max_len` per sequence.
#[derive(Debug, Clone, Copy)]
pub struct TokenBatch<'a> {
    pub ids: &'a [i64],
    pub max_len: usize,
    pub sequences: &'a [SequenceInfo],
}

/// Result for a batch: `tokens[i * max_len + t]` and `summaries[i]`.
#[derive(Debug, Clone, PartialEq)]
pub struct LocationParse {
    pub max_len: usize,
    pub tokens: Vec<LocationToken>,
    pub summaries: Vec<LocationSummary>,
}

impl LocationParse {
    pub fn sequence(&self, index: usize) -> Option<&[LocationToken]> {
        self.tokens
            .get(index * self.max_len..(index + 1) * self.max_len)
    }
}

/// Longest padded sequence accepted; far beyond any generation limit, and keeps
/// every index inside `i32` for the kernel.
pub const MAX_SEQUENCE_LEN: usize = 1 << 20;

/// Checks the batch shape; shared by the CPU twin and the kernel's host code.
pub fn validate(batch: &TokenBatch<'_>) -> Result<(), LocIdsError> {
    if batch.max_len > MAX_SEQUENCE_LEN {
        return Err(LocIdsError::TooLong {
            max_len: batch.max_len,
            max: MAX_SEQUENCE_LEN,
        });
    }
    if batch.ids.len() != batch.sequences.len() * batch.max_len {
        return Err(LocIdsError::IdsLength {
            ids: batch.ids.len(),
            items: batch.sequences.len(),
            max_len: batch.max_len,
        });
    }
    for (index, s) in batch.sequences.iter().enumerate() {
        if s.length as usize > batch.max_len {
            return Err(LocIdsError::SequenceLength {
                index,
                length: s.length,
                max_len: batch.max_len,
            });
        }
        let valid = |v: f32| v.is_finite() && v > 0.0;
        if !valid(s.image_width) || !valid(s.image_height) {
            return Err(LocIdsError::ImageSize {
                index,
                width: s.image_width,
                height: s.image_height,
            });
        }
        if ![0, 2, 4, 8].contains(&s.group_len) {
            return Err(LocIdsError::GroupLength {
                index,
                group_len: s.group_len,
            });
        }
    }
    Ok(())
}

/// The bin of `id`, or `None` when it is not a location token.
pub fn location_bin(id: i64, loc0_id: i64) -> Option<u32> {
    let bin = id.checked_sub(loc0_id)?;
    (0..i64::from(LOCATION_BINS))
        .contains(&bin)
        .then_some(bin as u32)
}

/// `(bin + 0.5) * size / 1000` and `(bin + 0.5) / 1000`, each f32 operation rounded
/// on its own (the kernel does the same, with FMA contraction disabled).
pub fn bin_to_coord(bin: u32, size: f32) -> (f32, f32) {
    let center = bin as f32 + 0.5;
    let bins = LOCATION_BINS as f32;
    (center * size / bins, center / bins)
}

/// Parses every sequence of the batch. `loc0_id` is the id of `<loc_0>` from
/// tokenizer.json.
pub fn parse_location_tokens(
    batch: &TokenBatch<'_>,
    loc0_id: i64,
) -> Result<LocationParse, LocIdsError> {
    validate(batch)?;
    let mut tokens = vec![LocationToken::NONE; batch.ids.len()];
    let mut summaries = Vec::with_capacity(batch.sequences.len());
    for (index, seq) in batch.sequences.iter().enumerate() {
        let ids = &batch.ids[index * batch.max_len..][..seq.length as usize];
        let out = &mut tokens[index * batch.max_len..][..seq.length as usize];
        summaries.push(parse_sequence(ids, seq, loc0_id, out));
    }
    Ok(LocationParse {
        max_len: batch.max_len,
        tokens,
        summaries,
    })
}

fn parse_sequence(
    ids: &[i64],
    seq: &SequenceInfo,
    loc0_id: i64,
    out: &mut [LocationToken],
) -> LocationSummary {
    let mut summary = LocationSummary::default();
    let mut t = 0;
    while t < ids.len() {
        if location_bin(ids[t], loc0_id).is_none() {
            t += 1;
            continue;
        }
        let start = t;
        let mut end = t;
        while end < ids.len() && location_bin(ids[end], loc0_id).is_some() {
            end += 1;
        }
        let run_len = end - start;
        summary.runs += 1;
        summary.location_tokens += run_len as u32;
        let group_len = seq.group_len as usize;
        if let Some(groups) = run_len.checked_div(group_len) {
            summary.complete_groups += groups as u32;
            summary.malformed_groups += u32::from(groups * group_len != run_len);
        }
        for (pos, slot) in out[start..end].iter_mut().enumerate() {
            let bin = location_bin(ids[start + pos], loc0_id).unwrap_or(0);
            let axis = (pos & 1) as u32;
            let size = if axis == 0 {
                seq.image_width
            } else {
                seq.image_height
            };
            let (coord_px, coord_norm) = bin_to_coord(bin, size);
            let (group, complete) = match pos.checked_div(group_len) {
                Some(group) => (group as i32, u32::from((group + 1) * group_len <= run_len)),
                None => (-1, 0),
            };
            *slot = LocationToken {
                bin: bin as i32,
                run_start: start as i32,
                run_len: run_len as i32,
                group,
                axis,
                complete,
                coord_px,
                coord_norm,
            };
        }
        t = end;
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOC0: i64 = 50_269;

    fn loc(bin: i64) -> i64 {
        LOC0 + bin
    }

    #[test]
    fn repr_c_layouts_match_the_kernel() {
        assert_eq!(std::mem::size_of::<SequenceInfo>(), 16);
        assert_eq!(std::mem::size_of::<LocationToken>(), 32);
        assert_eq!(std::mem::size_of::<LocationSummary>(), 16);
        assert_eq!(std::mem::align_of::<LocationToken>(), 4);
    }

    #[test]
    fn bins_and_ids() {
        assert_eq!(location_bin(LOC0, LOC0), Some(0));
        assert_eq!(location_bin(LOC0 + 999, LOC0), Some(999));
        assert_eq!(location_bin(LOC0 + 1000, LOC0), None);
        assert_eq!(location_bin(LOC0 - 1, LOC0), None);
        assert_eq!(location_bin(i64::MIN, LOC0), None);
    }

    #[test]
    fn coordinates_are_bin_centres() {
        assert_eq!(bin_to_coord(0, 1000.0), (0.5, 0.0005));
        assert_eq!(bin_to_coord(999, 1000.0), (999.5, 0.9995));
        assert_eq!(bin_to_coord(499, 640.0).0, 499.5 * 640.0 / 1000.0);
    }

    #[test]
    fn boxes_with_a_malformed_tail() {
        // "car" <loc_10><loc_20><loc_30><loc_40><loc_50><loc_60> "</s>" pad
        let ids = [
            2,
            0,
            1_000,
            loc(10),
            loc(20),
            loc(30),
            loc(40),
            loc(50),
            loc(60),
            2,
            1,
        ];
        let seqs = [SequenceInfo::new(640.0, 480.0, 10, LocationGrouping::Boxes)];
        let batch = TokenBatch {
            ids: &ids,
            max_len: ids.len(),
            sequences: &seqs,
        };
        let parse = parse_location_tokens(&batch, LOC0).expect("valid batch");
        assert_eq!(
            parse.summaries[0],
            LocationSummary {
                location_tokens: 6,
                runs: 1,
                complete_groups: 1,
                malformed_groups: 1
            }
        );
        let t = parse.sequence(0).expect("one sequence");
        assert_eq!(t[2], LocationToken::NONE);
        assert_eq!(t[10], LocationToken::NONE, "padding is never parsed");
        assert_eq!(
            t[3],
            LocationToken {
                bin: 10,
                run_start: 3,
                run_len: 6,
                group: 0,
                axis: 0,
                complete: 1,
                coord_px: 10.5 * 640.0 / 1000.0,
                coord_norm: 10.5 / 1000.0
            }
        );
        assert_eq!(t[4].axis, 1);
        assert_eq!(t[4].coord_px, 20.5 * 480.0 / 1000.0);
        assert_eq!((t[7].group, t[7].complete), (1, 0));
        assert_eq!((t[8].group, t[8].complete, t[8].axis), (1, 0, 1));
    }

    #[test]
    fn quads_polygons_and_ungrouped_runs() {
        let max_len = 12;
        let mut ids = vec![1i64; 3 * max_len];
        // quad: 8 locs then 3 more (malformed)
        for (i, slot) in ids[..11].iter_mut().enumerate() {
            *slot = loc(i as i64 * 7);
        }
        // polygon: 5 locs (two points + a stray x), a label, 2 locs (one point)
        let poly = [loc(1), loc(2), loc(3), loc(4), loc(5), 500, loc(6), loc(7)];
        ids[max_len..max_len + poly.len()].copy_from_slice(&poly);
        // caption with a stray location token
        ids[2 * max_len..2 * max_len + 3].copy_from_slice(&[100, loc(999), 101]);
        let seqs = [
            SequenceInfo::new(100.0, 50.0, 11, LocationGrouping::QuadBoxes),
            SequenceInfo::new(
                100.0,
                50.0,
                poly.len() as u32,
                LocationGrouping::PolygonPoints,
            ),
            SequenceInfo::new(100.0, 50.0, 3, LocationGrouping::None),
        ];
        let batch = TokenBatch {
            ids: &ids,
            max_len,
            sequences: &seqs,
        };
        let parse = parse_location_tokens(&batch, LOC0).expect("valid batch");
        assert_eq!(
            parse.summaries,
            vec![
                LocationSummary {
                    location_tokens: 11,
                    runs: 1,
                    complete_groups: 1,
                    malformed_groups: 1
                },
                LocationSummary {
                    location_tokens: 7,
                    runs: 2,
                    complete_groups: 3,
                    malformed_groups: 1
                },
                LocationSummary {
                    location_tokens: 1,
                    runs: 1,
                    complete_groups: 0,
                    malformed_groups: 0
                },
            ]
        );
        let poly_tokens = parse.sequence(1).expect("sequence 1");
        assert_eq!((poly_tokens[4].group, poly_tokens[4].complete), (2, 0));
        assert_eq!(
            (
                poly_tokens[6].run_start,
                poly_tokens[6].run_len,
                poly_tokens[6].complete
            ),
            (6, 2, 1)
        );
        let caption = parse.sequence(2).expect("sequence 2");
        assert_eq!(
            (caption[1].bin, caption[1].group, caption[1].complete),
            (999, -1, 0)
        );
    }

    #[test]
    fn invalid_batches_are_rejected() {
        let ids = [loc(1); 4];
        let good = SequenceInfo::new(10.0, 10.0, 4, LocationGrouping::Boxes);
        let check = |ids: &[i64], max_len: usize, seqs: &[SequenceInfo]| {
            parse_location_tokens(
                &TokenBatch {
                    ids,
                    max_len,
                    sequences: seqs,
                },
                LOC0,
            )
            .err()
        };
        assert!(matches!(
            check(&ids, 3, &[good]),
            Some(LocIdsError::IdsLength { .. })
        ));
        assert!(matches!(
            check(&ids, 4, &[SequenceInfo { length: 5, ..good }]),
            Some(LocIdsError::SequenceLength { length: 5, .. })
        ));
        assert!(matches!(
            check(
                &ids,
                4,
                &[SequenceInfo {
                    image_width: 0.0,
                    ..good
                }]
            ),
            Some(LocIdsError::ImageSize { .. })
        ));
        assert!(matches!(
            check(
                &ids,
                4,
                &[SequenceInfo {
                    image_height: f32::NAN,
                    ..good
                }]
            ),
            Some(LocIdsError::ImageSize { .. })
        ));
        assert!(matches!(
            check(
                &ids,
                4,
                &[SequenceInfo {
                    group_len: 3,
                    ..good
                }]
            ),
            Some(LocIdsError::GroupLength { group_len: 3, .. })
        ));
        assert_eq!(check(&ids, 4, &[good]), None);
    }
}
