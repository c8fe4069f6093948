//! The OCR set (`datasets/images/ocr/`): short real phrases of the GCIDE slices rendered in
//! real fonts of Debian's font packages, at varied sizes and colours on solid, gradient and
//! smooth-noise backgrounds; the task is to read the text.

use ab_glyph::{Font, FontVec, PxScale, ScaleFont, point};
use anyhow::{Context, bail};
use image::{Rgb, RgbImage};

use super::debian::DebianPackage;
use super::image_set::{Example, HeldOut, ImageSet, Task, check_disjoint};
use super::seeded::SeededRng;
use super::{GCIDE_EVAL, GCIDE_TRAIN, gcide_senses};

/// Where the set is written, from the repository root.
const FOLDER: &str = "datasets/images/ocr";
/// The seed of every random choice of the set.
const SEED: u64 = 0x0c12_5e70_0000_0001;
/// Images of the train split.
const TRAIN_IMAGES: usize = 360;
/// Images of the held-out split.
const EVAL_IMAGES: usize = 100;
/// Image width and height: one line of text, a multiple of the tiny model's 32-pixel merged
/// patch on both sides.
const SIZE: (u32, u32) = (128, 32);
/// Free pixels kept at the left and right of the text.
const MARGIN: f32 = 4.0;
/// The longest phrase (characters): longer ones would need a font too small to read at 32
/// pixels of height.
const MAX_PHRASE_LEN: usize = 14;
/// The line height (ascent to descent, pixels) a phrase is drawn at is drawn from this range,
/// then lowered until the phrase fits the width.
const LINE_HEIGHTS: (u32, u32) = (16, 28);
/// The steps of a gradient or noise background between its two colours.
const BLEND_LEVELS: u32 = 10;
/// The least contrast ratio (WCAG 2) between the text colour and every background colour: the
/// level WCAG asks of body text.
const MIN_CONTRAST: f32 = 4.5;

/// DejaVu 2.37: sans, serif and mono.
const DEJAVU: DebianPackage = DebianPackage {
    name: "fonts-dejavu-core",
    version: "2.37-6",
};
/// Liberation 2.1.5: metric-compatible with Arial, Times New Roman and Courier New.
const LIBERATION: DebianPackage = DebianPackage {
    name: "fonts-liberation2",
    version: "2.1.5-1",
};
/// Noto (the 2020-12-25 snapshot): Google's sans and serif.
const NOTO: DebianPackage = DebianPackage {
    name: "fonts-noto-core",
    version: "20201225-1",
};
/// The font packages, in the order of their notices.
const PACKAGES: [&DebianPackage; 3] = [&DEJAVU, &LIBERATION, &NOTO];

/// A font face the phrases are drawn in.
struct Face {
    /// The package that ships it.
    package: &'static DebianPackage,
    /// Its file in the unpacked package.
    file: &'static str,
    /// Its name as the captions give it.
    name: &'static str,
}

/// Ten faces of eight families: sans, serif and monospace; regular, bold and italic.
const FACES: [Face; 10] = [
    Face {
        package: &DEJAVU,
        file: "usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        name: "DejaVu Sans",
    },
    Face {
        package: &DEJAVU,
        file: "usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
        name: "DejaVu Sans Bold",
    },
    Face {
        package: &DEJAVU,
        file: "usr/share/fonts/truetype/dejavu/DejaVuSerif.ttf",
        name: "DejaVu Serif",
    },
    Face {
        package: &DEJAVU,
        file: "usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf",
        name: "DejaVu Sans Mono",
    },
    Face {
        package: &LIBERATION,
        file: "usr/share/fonts/truetype/liberation2/LiberationSans-Regular.ttf",
        name: "Liberation Sans",
    },
    Face {
        package: &LIBERATION,
        file: "usr/share/fonts/truetype/liberation2/LiberationSerif-Regular.ttf",
        name: "Liberation Serif",
    },
    Face {
        package: &LIBERATION,
        file: "usr/share/fonts/truetype/liberation2/LiberationSerif-Italic.ttf",
        name: "Liberation Serif Italic",
    },
    Face {
        package: &LIBERATION,
        file: "usr/share/fonts/truetype/liberation2/LiberationMono-Bold.ttf",
        name: "Liberation Mono Bold",
    },
    Face {
        package: &NOTO,
        file: "usr/share/fonts/truetype/noto/NotoSans-Italic.ttf",
        name: "Noto Sans Italic",
    },
    Face {
        package: &NOTO,
        file: "usr/share/fonts/truetype/noto/NotoSerif-Bold.ttf",
        name: "Noto Serif Bold",
    },
];

/// The question of every conversation and task of the set.
const QUESTION: &str = "What does the text say?";

/// Makes the OCR set: train phrases from the GCIDE train slice, held-out phrases from the
/// held-out slice less any phrase (ignoring case) of the train slice.
pub(crate) fn ocr_set() -> anyhow::Result<ImageSet> {
    let fonts = FACES
        .iter()
        .map(|face| {
            let path = face.package.unpacked()?.join(face.file);
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            FontVec::try_from_vec(bytes).with_context(|| format!("parsing {}", path.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut rng = SeededRng::new(SEED);
    let train_candidates = phrases(GCIDE_TRAIN)?;
    let train_lower: std::collections::HashSet<String> =
        train_candidates.iter().map(|p| p.to_lowercase()).collect();
    let eval_candidates: Vec<String> = phrases(GCIDE_EVAL)?
        .into_iter()
        .filter(|p| !train_lower.contains(&p.to_lowercase()))
        .collect();
    let train_phrases = sample(&mut rng, train_candidates, TRAIN_IMAGES)?;
    let eval_phrases = sample(&mut rng, eval_candidates, EVAL_IMAGES)?;
    check_disjoint(FOLDER, &train_phrases, &eval_phrases)?;
    let mut example = |phrase: &String| {
        let face = rng.below(FACES.len());
        Example {
            image: render(&mut rng, &fonts[face], phrase),
            caption: Some(format!("The text \"{phrase}\" in {}.", FACES[face].name)),
            question: QUESTION.into(),
            reply: phrase.clone(),
        }
    };
    let train = train_phrases.iter().map(&mut example).collect();
    let eval = eval_phrases
        .iter()
        .map(|phrase| HeldOut {
            example: example(phrase),
            task: Task::Exact(phrase.clone()),
        })
        .collect();
    let notices = PACKAGES
        .iter()
        .map(|package| package.notice())
        .collect::<anyhow::Result<_>>()?;
    Ok(ImageSet {
        folder: FOLDER,
        train,
        eval,
        notices,
    })
}

/// `count` phrases of `candidates`, in a random order.
fn sample(
    rng: &mut SeededRng,
    mut candidates: Vec<String>,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    if candidates.len() < count {
        bail!("{FOLDER}: {} phrases, {count} wanted", candidates.len());
    }
    rng.shuffle(&mut candidates);
    candidates.truncate(count);
    Ok(candidates)
}

/// The phrases of a GCIDE slice, in file order, each once (ignoring case): every headword and
/// every piece of a definition between punctuation (`;`, `,`, `.`, `:`, brackets) that is one
/// to three words of letters (a word may hold a hyphen or an apostrophe) and 3 to
/// `MAX_PHRASE_LEN` characters long.
fn phrases(slice: &str) -> anyhow::Result<Vec<String>> {
    let mut seen = std::collections::HashSet::new();
    let mut phrases = Vec::new();
    for sense in gcide_senses(slice)? {
        let pieces = sense
            .definition
            .split([';', ',', '.', ':', '(', ')', '[', ']'])
            .map(str::to_string);
        for piece in std::iter::once(sense.headword).chain(pieces) {
            let phrase = piece.split_whitespace().collect::<Vec<_>>().join(" ");
            if is_phrase(&phrase) && seen.insert(phrase.to_lowercase()) {
                phrases.push(phrase);
            }
        }
    }
    Ok(phrases)
}

/// Whether `text` is one to three words of letters, 3 to `MAX_PHRASE_LEN` characters long.
fn is_phrase(text: &str) -> bool {
    let word = |w: &str| {
        w.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            && w.bytes().last().is_some_and(|b| b.is_ascii_alphabetic())
            && w.bytes()
                .all(|b| b.is_ascii_alphabetic() || b == b'-' || b == b'\'')
    };
    let words = text.split(' ').count();
    (3..=MAX_PHRASE_LEN).contains(&text.len())
        && (1..=3).contains(&words)
        && text.split(' ').all(word)
}

/// `phrase` drawn in `font` at a random line height (lowered to fit), a random position and
/// random colours, on a random background.
fn render(rng: &mut SeededRng, font: &FontVec, phrase: &str) -> RgbImage {
    let (width, height) = SIZE;
    let (background, ink) = palette(rng);
    let mut image = background.paint(rng, width, height);
    let wanted = rng.between(LINE_HEIGHTS.0, LINE_HEIGHTS.1) as f32;
    let at_one = text_width(font, PxScale::from(1.0), phrase);
    let line_height = wanted.min((width as f32 - 2.0 * MARGIN) / at_one);
    let scaled = font.as_scaled(PxScale::from(line_height));
    let text_width = at_one * line_height;
    let slack_x = width as f32 - 2.0 * MARGIN - text_width;
    let slack_y = height as f32 - line_height;
    let left = MARGIN + rng.unit() * slack_x;
    let baseline = rng.unit() * slack_y + scaled.ascent();
    let mut x = left;
    let mut previous = None;
    for c in phrase.chars() {
        let id = scaled.glyph_id(c);
        if let Some(previous) = previous {
            x += scaled.kern(previous, id);
        }
        let glyph = id.with_scale_and_position(line_height, point(x, baseline));
        x += scaled.h_advance(id);
        previous = Some(id);
        let Some(outline) = font.outline_glyph(glyph) else {
            continue;
        };
        let bounds = outline.px_bounds();
        outline.draw(|gx, gy, coverage| {
            let px = bounds.min.x as i32 + gx as i32;
            let py = bounds.min.y as i32 + gy as i32;
            if (0..width as i32).contains(&px) && (0..height as i32).contains(&py) {
                let pixel = image.get_pixel_mut(px as u32, py as u32);
                *pixel = mix(*pixel, ink, coverage.clamp(0.0, 1.0));
            }
        });
    }
    image
}

/// The advance width of `phrase` at `scale`, kerning included.
fn text_width(font: &FontVec, scale: PxScale, phrase: &str) -> f32 {
    let scaled = font.as_scaled(scale);
    let mut width = 0.0;
    let mut previous = None;
    for c in phrase.chars() {
        let id = scaled.glyph_id(c);
        if let Some(previous) = previous {
            width += scaled.kern(previous, id);
        }
        width += scaled.h_advance(id);
        previous = Some(id);
    }
    width
}

/// How the background is painted.
enum Background {
    /// One colour.
    Solid(Rgb<u8>),
    /// A linear blend of two colours along a direction (radians).
    Gradient(Rgb<u8>, Rgb<u8>, f32),
    /// Smooth value noise between two colours: random blend weights on a lattice of `cell`
    /// pixels, interpolated between lattice points.
    Noise(Rgb<u8>, Rgb<u8>, u32),
}

impl Background {
    /// The background as an image of `width × height`.
    fn paint(&self, rng: &mut SeededRng, width: u32, height: u32) -> RgbImage {
        match *self {
            Background::Solid(colour) => RgbImage::from_pixel(width, height, colour),
            Background::Gradient(from, to, angle) => {
                let (dx, dy) = (angle.cos(), angle.sin());
                let project = |x: f32, y: f32| x * dx + y * dy;
                let corners = [
                    project(0.0, 0.0),
                    project(width as f32, 0.0),
                    project(0.0, height as f32),
                    project(width as f32, height as f32),
                ];
                let low = corners.iter().copied().fold(f32::INFINITY, f32::min);
                let high = corners.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                RgbImage::from_fn(width, height, |x, y| {
                    let t = (project(x as f32 + 0.5, y as f32 + 0.5) - low) / (high - low);
                    mix(from, to, banded(t))
                })
            }
            Background::Noise(from, to, cell) => {
                let columns = width / cell + 2;
                let rows = height / cell + 2;
                let lattice: Vec<f32> = (0..columns * rows).map(|_| rng.unit()).collect();
                let at = |c: u32, r: u32| lattice[(r * columns + c) as usize];
                RgbImage::from_fn(width, height, |x, y| {
                    let (fx, fy) = (x as f32 / cell as f32, y as f32 / cell as f32);
                    let (c, r) = (fx as u32, fy as u32);
                    let (tx, ty) = (smooth(fx.fract()), smooth(fy.fract()));
                    let top = at(c, r) + (at(c + 1, r) - at(c, r)) * tx;
                    let bottom = at(c, r + 1) + (at(c + 1, r + 1) - at(c, r + 1)) * tx;
                    mix(from, to, banded(top + (bottom - top) * ty))
                })
            }
        }
    }

    /// The colours the background is made of (a blend of two lies between them in contrast).
    fn colours(&self) -> Vec<Rgb<u8>> {
        match *self {
            Background::Solid(colour) => vec![colour],
            Background::Gradient(from, to, _) | Background::Noise(from, to, _) => {
                vec![from, to, mix(from, to, 0.5)]
            }
        }
    }
}

/// `t` in `[0, 1]` rounded to one of `BLEND_LEVELS` steps: bands of one colour, which PNG
/// stores in a fraction of the bytes of a blend that changes at every pixel.
fn banded(t: f32) -> f32 {
    let top = (BLEND_LEVELS - 1) as f32;
    (t.clamp(0.0, 1.0) * top).round() / top
}

/// The smoothstep curve: interpolation between lattice points without visible creases.
fn smooth(t: f32) -> f32 {
    t * t * (3.0 - 2.0 * t)
}

/// A random background and a text colour legible on all of it: dark text on a light
/// background seven times in ten, light on dark otherwise; colours redrawn until the contrast
/// ratio with every background colour is at least `MIN_CONTRAST`.
fn palette(rng: &mut SeededRng) -> (Background, Rgb<u8>) {
    let light_background = rng.below(10) < 7;
    let (background_range, ink_range) = if light_background {
        ((150, 255), (0, 100))
    } else {
        ((0, 110), (180, 255))
    };
    loop {
        let first = random_colour(rng, background_range);
        let second = random_colour(rng, background_range);
        let ink = random_colour(rng, ink_range);
        let background = match rng.below(3) {
            0 => Background::Solid(first),
            1 => Background::Gradient(first, second, rng.unit() * std::f32::consts::TAU),
            _ => Background::Noise(first, second, 8 << rng.below(2)),
        };
        if background
            .colours()
            .iter()
            .all(|&c| contrast_ratio(c, ink) >= MIN_CONTRAST)
        {
            return (background, ink);
        }
    }
}

/// A colour whose every channel is drawn from `low..=high`.
fn random_colour(rng: &mut SeededRng, (low, high): (u32, u32)) -> Rgb<u8> {
    Rgb(std::array::from_fn(|_| rng.between(low, high) as u8))
}

/// `from` blended towards `to` by `t` in `[0, 1]`, per sRGB channel.
fn mix(from: Rgb<u8>, to: Rgb<u8>, t: f32) -> Rgb<u8> {
    Rgb(std::array::from_fn(|i| {
        (from[i] as f32 + (to[i] as f32 - from[i] as f32) * t).round() as u8
    }))
}

/// The WCAG 2 contrast ratio of two sRGB colours, from 1 (none) to 21 (black on white).
fn contrast_ratio(a: Rgb<u8>, b: Rgb<u8>) -> f32 {
    let (la, lb) = (relative_luminance(a), relative_luminance(b));
    (la.max(lb) + 0.05) / (la.min(lb) + 0.05)
}

/// The WCAG 2 relative luminance of an sRGB colour.
fn relative_luminance(colour: Rgb<u8>) -> f32 {
    let linear = |v: u8| {
        let c = v as f32 / 255.0;
        if c <= 0.039_28 {
            c / 12.92
        } else {
            ((c + 0.055) / 1.055).powf(2.4)
        }
    };
    0.2126 * linear(colour[0]) + 0.7152 * linear(colour[1]) + 0.0722 * linear(colour[2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phrases_are_short_runs_of_words() {
        for good in ["Box", "a tyro", "to throw out", "well-being", "o'clock"] {
            assert!(is_phrase(good), "{good}");
        }
        for bad in [
            "A",
            "as",
            "one two three four",
            "Acknowledgment money",
            "C4",
            "-ing",
        ] {
            assert!(!is_phrase(bad), "{bad}");
        }
    }

    #[test]
    fn contrast_spans_the_wcag_range() {
        let (black, white) = (Rgb([0, 0, 0]), Rgb([255, 255, 255]));
        assert!((contrast_ratio(black, white) - 21.0).abs() < 1e-3);
        assert!((contrast_ratio(white, white) - 1.0).abs() < 1e-6);
    }
}
