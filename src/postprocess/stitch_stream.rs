//! The id route's [`StructuredAnswer`]: a sequence's [`Piece`]s as a stream of atoms (characters,
//! location tokens with their bins, polygon markers), and the reference's box, quad and polygon
//! rules applied to that stream structurally. [`super::stitch`] makes the pieces from the ids and
//! checks the location parse; its module documentation says how the text route is reproduced.

use super::parse::{
    python_strip, BoxInstance, BoxLabels, GroupSize, PolygonInstance, QuadInstance,
};
use super::stitch::{push_location, raw_text, Piece};
use super::{Dropped, StructuredAnswer, BANNED_GROUNDING_PHRASES};

/// The polygon markers, which the polygon rules treat as tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    Sep,
    Poly,
    PolyEnd,
}

impl Marker {
    const ALL: [Marker; 3] = [Marker::Sep, Marker::Poly, Marker::PolyEnd];

    fn text(self) -> &'static str {
        match self {
            Marker::Sep => "<sep>",
            Marker::Poly => "<poly>",
            Marker::PolyEnd => "</poly>",
        }
    }
}

/// One unit of the cleaned text: a character, a location token (index into `Stream::bins`) or a
/// polygon marker. Location tokens and markers never contain `<` after their first character.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Atom {
    Char(char),
    Location(usize),
    Marker(Marker),
}

/// The cleaned text of a sequence as atoms, with the bins of its location tokens and whether a
/// parser used each, plus the decoded text itself; the id route's [`StructuredAnswer`].
pub(super) struct Stream {
    atoms: Vec<Atom>,
    bins: Vec<u32>,
    used: Vec<bool>,
    /// `decode(ids)`: the decoded spans, location tokens written from their bins.
    pub(super) decoded_text: String,
    /// Whether a decoded span holds `<poly>` (see [`StructuredAnswer::holds_poly`]).
    holds_poly: bool,
}

impl Stream {
    /// The cleaned text as atoms, with `<sep>`, `<poly>`, `</poly>` split out as markers. The
    /// box and quad rules see a marker exactly as its characters: its text starts with its only
    /// `<`, so what `[^<]+` takes of it (its tail), its rendering, and that it ends a run of
    /// location tokens are the same either way.
    pub(super) fn new(pieces: &[Piece]) -> Self {
        let mut atoms = Vec::new();
        let mut bins = Vec::new();
        for piece in pieces {
            match piece {
                Piece::Location(bin) => {
                    atoms.push(Atom::Location(bins.len()));
                    bins.push(*bin);
                }
                Piece::Text { cleaned, .. } => {
                    let mut rest = cleaned.as_str();
                    while let Some(c) = rest.chars().next() {
                        match Marker::ALL.into_iter().find(|m| rest.starts_with(m.text())) {
                            Some(m) => {
                                atoms.push(Atom::Marker(m));
                                rest = rest.get(m.text().len()..).unwrap_or_default();
                            }
                            None => {
                                atoms.push(Atom::Char(c));
                                rest = rest.get(c.len_utf8()..).unwrap_or_default();
                            }
                        }
                    }
                }
            }
        }
        let used = vec![false; bins.len()];
        // The reference looks for "<poly>" in the text before the clean-up; it cannot span a
        // location token (see `Piece`), so looking inside each decoded span is the same.
        let holds_poly = pieces
            .iter()
            .any(|p| matches!(p, Piece::Text { raw, .. } if raw.contains("<poly>")));
        Self {
            atoms,
            bins,
            used,
            decoded_text: raw_text(pieces),
            holds_poly,
        }
    }

    fn bin(&self, index: usize) -> u32 {
        self.bins.get(index).copied().unwrap_or_default()
    }

    fn render(&self, atoms: &[Atom], out: &mut String) {
        for atom in atoms {
            match *atom {
                Atom::Char(c) => out.push(c),
                Atom::Location(k) => push_location(out, self.bin(k)),
                Atom::Marker(m) => out.push_str(m.text()),
            }
        }
    }

    /// A token's text after its `<`: what `[^<]+` can take of it.
    fn tail(&self, atom: Atom) -> String {
        let mut text = String::new();
        self.render(&[atom], &mut text);
        text.get(1..).unwrap_or_default().to_owned()
    }

    /// Maximal runs `[start, end)` of atoms that are members.
    fn chains(&self, member: impl Fn(Atom) -> bool) -> Vec<(usize, usize)> {
        let mut chains = Vec::new();
        let mut start = None;
        for (i, &atom) in self.atoms.iter().enumerate() {
            match (member(atom), start) {
                (true, None) => start = Some(i),
                (false, Some(s)) => {
                    chains.push((s, i));
                    start = None;
                }
                _ => {}
            }
        }
        if let Some(s) = start {
            chains.push((s, self.atoms.len()));
        }
        chains
    }

    /// What `[^<]+` matches right before atom `start`, not reaching back before `consumed` (the
    /// end of the previous match): characters back to the previous `<`, which may be the `<` of a
    /// token whose tail then begins the text.
    fn text_before(&self, start: usize, consumed: usize) -> String {
        let mut reversed = Vec::new();
        let mut tail = String::new();
        let mut i = start;
        while i > consumed {
            match self.atoms[i - 1] {
                Atom::Char('<') => break,
                Atom::Char(c) => reversed.push(c),
                token => {
                    tail = self.tail(token);
                    break;
                }
            }
            i -= 1;
        }
        tail.extend(reversed.into_iter().rev());
        tail
    }

    /// A phrase `[^<]+` + at least `min` chain atoms, for the chain `[start, end)`: the label text
    /// and the first chain atom of the match, or `None` when no match ends with this chain.
    fn phrase(
        &self,
        start: usize,
        end: usize,
        consumed: usize,
        min: usize,
    ) -> Option<(String, usize)> {
        let before = self.text_before(start, consumed);
        if !before.is_empty() {
            return (end - start >= min).then_some((before, start));
        }
        // Nothing to take before the chain: the match starts inside its first token.
        (end - start > min).then(|| (self.tail(self.atoms[start]), start + 1))
    }

    fn take(&mut self, atoms: &[Atom]) -> Vec<u32> {
        let mut bins = Vec::with_capacity(atoms.len());
        for atom in atoms {
            if let Atom::Location(k) = *atom {
                if let Some(flag) = self.used.get_mut(k) {
                    *flag = true;
                }
                bins.push(self.bin(k));
            }
        }
        bins
    }
}

impl StructuredAnswer for Stream {
    fn decoded_text(&self) -> &str {
        &self.decoded_text
    }

    fn holds_poly(&self) -> bool {
        self.holds_poly
    }

    /// `parse::boxes`: `[^<]+(?:<loc_\d+>){4,}` (or without the label), the label up to the first
    /// delimiter, then a box per four tokens.
    fn boxes(&mut self, labels: BoxLabels) -> Vec<BoxInstance> {
        let chains = self.chains(|a| matches!(a, Atom::Location(_)));
        let mut instances = Vec::new();
        let mut consumed = 0;
        for (start, end) in chains {
            let phrase = match labels {
                BoxLabels::Empty => (end - start >= 4).then(|| (String::new(), start)),
                BoxLabels::Required | BoxLabels::RequiredNotBanned => {
                    self.phrase(start, end, consumed, 4)
                }
            };
            let Some((label, first)) = phrase else {
                continue;
            };
            consumed = end;
            if !label_on_one_line(&label) {
                continue;
            }
            let label = python_strip(&label);
            if labels == BoxLabels::RequiredNotBanned && BANNED_GROUNDING_PHRASES.contains(&label) {
                continue;
            }
            let label = ascii_only(label);
            let mut at = first;
            while at + 4 <= end {
                let atoms = self.atoms[at..at + 4].to_vec();
                if let Ok(bins) = <[u32; 4]>::try_from(self.take(&atoms)) {
                    instances.push(BoxInstance {
                        label: label.clone(),
                        bins,
                    });
                }
                at += 4;
            }
        }
        instances
    }

    /// `parse::quads`: `(.+?)` then eight location tokens, leftmost first; `.` crosses anything
    /// but a line break, location tokens included.
    fn quads(&mut self) -> Vec<QuadInstance> {
        let is_location = |a: &Atom| matches!(a, Atom::Location(_));
        let candidates: Vec<usize> = (0..self.atoms.len())
            .filter(|&i| {
                self.atoms
                    .get(i..i + 8)
                    .is_some_and(|run| run.iter().all(is_location))
            })
            .collect();
        let mut instances = Vec::new();
        let mut search = 0;
        let mut next = 0;
        loop {
            while candidates.get(next).is_some_and(|&p| p <= search) {
                next += 1;
            }
            let Some(&quad_start) = candidates.get(next) else {
                break;
            };
            let line = &self.atoms[search..quad_start];
            if let Some(newline) = line.iter().rposition(|&a| a == Atom::Char('\n')) {
                search += newline + 1;
                continue;
            }
            let mut content = String::new();
            self.render(line, &mut content);
            let atoms = self.atoms[quad_start..quad_start + 8].to_vec();
            if let Ok(bins) = <[u32; 8]>::try_from(self.take(&atoms)) {
                instances.push(QuadInstance {
                    label: python_strip(&content).to_owned(),
                    bins,
                });
            }
            search = quad_start + 8;
        }
        instances
    }

    /// `parse::polygons`: phrases of at least four tokens (location tokens and markers), the
    /// label before the first location token or `<poly>`, instances between `<poly>` and
    /// `</poly>`, polygons as runs of location tokens ended by `<sep>` or the instance's end.
    fn polygons(&mut self, require_label: bool) -> Vec<PolygonInstance> {
        let chains = self.chains(|a| !matches!(a, Atom::Char(_)));
        let mut instances = Vec::new();
        let mut consumed = 0;
        for (start, end) in chains {
            let phrase = if require_label {
                self.phrase(start, end, consumed, 4)
            } else {
                (end - start >= 4).then(|| (String::new(), start))
            };
            let Some((before, first)) = phrase else {
                continue;
            };
            consumed = end;
            let chain = self.atoms[first..end].to_vec();
            // `^<loc_\d+>` is skipped for the label; with a label the phrase starts with text.
            let after_first = match chain.first() {
                Some(Atom::Location(_)) if !require_label => &chain[1..],
                _ => &chain[..],
            };
            let Some(delimiter) = after_first
                .iter()
                .position(|a| matches!(a, Atom::Location(_) | Atom::Marker(Marker::Poly)))
            else {
                continue;
            };
            let mut label = before;
            self.render(&after_first[..delimiter], &mut label);
            if !label_on_one_line(&label) {
                continue;
            }
            let label = python_strip(&label).to_owned();

            let has = |m: Marker| chain.contains(&Atom::Marker(m));
            let parts: Vec<&[Atom]> = if has(Marker::Poly) && has(Marker::PolyEnd) {
                let mut parts = Vec::new();
                let mut at = 0;
                while let Some(open) = chain[at..]
                    .iter()
                    .position(|&a| a == Atom::Marker(Marker::Poly))
                {
                    let inner = at + open + 1;
                    let Some(close) = chain[inner..]
                        .iter()
                        .position(|&a| a == Atom::Marker(Marker::PolyEnd))
                    else {
                        break;
                    };
                    parts.push(&chain[inner..inner + close]);
                    at = inner + close + 1;
                }
                parts
            } else {
                vec![&chain[..]]
            };
            for part in parts {
                let mut polygons = Vec::new();
                let mut i = 0;
                while i < part.len() {
                    if !matches!(part[i], Atom::Location(_)) {
                        i += 1;
                        continue;
                    }
                    let run_end = part[i..]
                        .iter()
                        .position(|a| !matches!(a, Atom::Location(_)))
                        .map_or(part.len(), |n| i + n);
                    let closes = part
                        .get(run_end)
                        .is_none_or(|&a| a == Atom::Marker(Marker::Sep));
                    if closes {
                        // The reference abandons an unpaired last value.
                        let paired = (run_end - i) / 2 * 2;
                        polygons.push(self.take(&part[i..i + paired]));
                    }
                    i = run_end;
                }
                if polygons.is_empty() {
                    continue;
                }
                instances.push(PolygonInstance {
                    label: label.clone(),
                    polygons,
                });
            }
        }
        instances
    }

    /// `LocationTokens::dropped`: unused location tokens standing next to each other form a run.
    fn dropped(&self, group: GroupSize) -> Dropped {
        group.count(self.atoms.iter().map(|atom| {
            matches!(*atom, Atom::Location(k) if !self.used.get(k).copied().unwrap_or(false))
        }))
    }
}

/// Whether the reference's label pattern `^[\s\x1C-\x1F]*.*?<delimiter>` matches `label` before
/// its delimiter: leading white space may hold line breaks, the rest (`.`) may not.
fn label_on_one_line(label: &str) -> bool {
    !label
        .trim_start_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
        .contains('\n')
}

/// `s.encode("ascii", "ignore").decode("ascii")`.
fn ascii_only(s: &str) -> String {
    s.chars().filter(char::is_ascii).collect()
}
