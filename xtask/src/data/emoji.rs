//! The emoji set (`datasets/images/emoji/`): the colour bitmaps of Noto Color Emoji for the
//! single-code-point emoji of Unicode's `emoji-test.txt`, named by their CLDR short names; the
//! task is to name the emoji.

use ab_glyph::{Font, FontVec, GlyphImageFormat};
use anyhow::{Context, bail};
use image::imageops::FilterType;
use image::{Rgb, RgbImage};

use super::debian::DebianPackage;
use super::image_set::{Example, HeldOut, ImageSet, check_disjoint, flatten, multiple_choice};
use super::seeded::SeededRng;

/// Where the set is written, from the repository root.
const FOLDER: &str = "datasets/images/emoji";
/// The seed of every random choice of the set.
const SEED: u64 = 0xe3_0715_e700_0003;
/// Emoji (one image each) of the train split.
const TRAIN_IMAGES: usize = 240;
/// Emoji (one image each) of the held-out split.
const EVAL_IMAGES: usize = 100;
/// The side of every image: the tiny model's input.
const SIDE: u32 = 64;
/// The longer side of the emoji in the image; the rest is white margin.
const EMOJI_SIDE: u32 = 56;
/// The background the transparent parts of an emoji are shown on.
const WHITE: Rgb<u8> = Rgb([255, 255, 255]);

/// Noto Color Emoji 2.042 (Unicode 15): a CBDT font, whose glyphs are PNG bitmaps.
const NOTO_COLOR_EMOJI: DebianPackage = DebianPackage {
    name: "fonts-noto-color-emoji",
    version: "2.042-0+deb12u1",
};
/// The font file in the unpacked package.
const FONT_FILE: &str = "usr/share/fonts/truetype/noto/NotoColorEmoji.ttf";
/// The Unicode 15.0 data files, `emoji-test.txt` among them.
const UNICODE_DATA: DebianPackage = DebianPackage {
    name: "unicode-data",
    version: "15.0.0-1",
};
/// The list of emoji with their names in the unpacked package.
const EMOJI_TEST_FILE: &str = "usr/share/unicode/emoji/emoji-test.txt";
/// The question of every conversation and task of the set.
const QUESTION: &str = "Which emoji is this?";

/// An emoji of the list.
struct Emoji {
    /// Its code point.
    character: char,
    /// Its CLDR short name, e.g. "grinning face".
    name: String,
}

/// Makes the emoji set: the listed single-code-point emoji that the font draws, in a random
/// order; the first `EVAL_IMAGES` held out, the next `TRAIN_IMAGES` trained on.
pub(crate) fn emoji_set() -> anyhow::Result<ImageSet> {
    let font_path = NOTO_COLOR_EMOJI.unpacked()?.join(FONT_FILE);
    let font = FontVec::try_from_vec(
        std::fs::read(&font_path).with_context(|| format!("reading {}", font_path.display()))?,
    )
    .with_context(|| format!("parsing {}", font_path.display()))?;
    let list = UNICODE_DATA.unpacked()?.join(EMOJI_TEST_FILE);
    let list_text =
        std::fs::read_to_string(&list).with_context(|| format!("reading {}", list.display()))?;
    let mut emoji: Vec<Emoji> = single_code_point_emoji(&list_text)
        .with_context(|| format!("parsing {}", list.display()))?
        .into_iter()
        .filter(|e| font.glyph_id(e.character).0 != 0)
        .collect();
    if emoji.len() < TRAIN_IMAGES + EVAL_IMAGES {
        bail!(
            "{FOLDER}: {} emoji, {} wanted",
            emoji.len(),
            TRAIN_IMAGES + EVAL_IMAGES
        );
    }
    let mut rng = SeededRng::new(SEED);
    rng.shuffle(&mut emoji);
    emoji.truncate(TRAIN_IMAGES + EVAL_IMAGES);
    let train_emoji = emoji.split_off(EVAL_IMAGES);
    let eval_emoji = emoji;
    let names = |list: &[Emoji]| list.iter().map(|e| e.name.clone()).collect::<Vec<_>>();
    let eval_names = names(&eval_emoji);
    check_disjoint(FOLDER, &names(&train_emoji), &eval_names)?;
    let example = |emoji: &Emoji| -> anyhow::Result<Example> {
        Ok(Example {
            image: draw(&font, emoji.character)?,
            caption: Some(format!("The {} emoji.", emoji.name)),
            question: QUESTION.into(),
            reply: format!("The {} emoji.", emoji.name),
        })
    };
    let train = train_emoji
        .iter()
        .map(example)
        .collect::<anyhow::Result<_>>()?;
    let eval = eval_emoji
        .iter()
        .map(|emoji| {
            Ok(HeldOut {
                example: example(emoji)?,
                task: multiple_choice(&mut rng, &emoji.name, &eval_names),
            })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(ImageSet {
        folder: FOLDER,
        train,
        eval,
        notices: vec![NOTO_COLOR_EMOJI.notice()?, UNICODE_DATA.notice()?],
    })
}

/// The fully-qualified emoji of `emoji-test.txt` that are one code point (optionally followed
/// by the emoji presentation selector U+FE0F), in file order. A line reads
/// `1F600 ; fully-qualified # 😀 E1.0 grinning face`.
fn single_code_point_emoji(text: &str) -> anyhow::Result<Vec<Emoji>> {
    let mut emoji = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((points, rest)) = line.split_once(';') else {
            continue;
        };
        let Some((status, comment)) = rest.split_once('#') else {
            bail!("no comment in {line:?}");
        };
        let points: Vec<&str> = points.split_whitespace().collect();
        let single = match points.as_slice() {
            [point] | [point, "FE0F"] => point,
            _ => continue,
        };
        if status.trim() != "fully-qualified" {
            continue;
        }
        let character = u32::from_str_radix(single, 16)
            .ok()
            .and_then(char::from_u32)
            .with_context(|| format!("bad code point in {line:?}"))?;
        // After `#`: the emoji, its version (`E1.0`), then the name.
        let name = comment
            .split_whitespace()
            .skip(2)
            .collect::<Vec<_>>()
            .join(" ");
        if name.is_empty() {
            bail!("no name in {line:?}");
        }
        emoji.push(Emoji { character, name });
    }
    Ok(emoji)
}

/// The font's largest bitmap of `character`, on white, scaled (keeping its shape) so that its
/// longer side is `EMOJI_SIDE`, centred in a `SIDE × SIDE` image.
fn draw(font: &FontVec, character: char) -> anyhow::Result<RgbImage> {
    let glyph = font
        .glyph_raster_image2(font.glyph_id(character), u16::MAX)
        .with_context(|| format!("no bitmap for {character:?}"))?;
    if !matches!(glyph.format, GlyphImageFormat::Png) {
        bail!("the bitmap of {character:?} is not a PNG");
    }
    let rgba = image::load_from_memory_with_format(glyph.data, image::ImageFormat::Png)
        .with_context(|| format!("decoding the bitmap of {character:?}"))?
        .to_rgba8();
    // Flattened before scaling: the filter then never mixes in the colour of transparent
    // pixels.
    let flat = flatten(&rgba, WHITE);
    let (width, height) = flat.dimensions();
    let scale = EMOJI_SIDE as f32 / width.max(height) as f32;
    let (w, h) = (
        ((width as f32 * scale).round() as u32).max(1),
        ((height as f32 * scale).round() as u32).max(1),
    );
    let small = image::imageops::resize(&flat, w, h, FilterType::Lanczos3);
    let mut image = RgbImage::from_pixel(SIDE, SIDE, WHITE);
    image::imageops::replace(
        &mut image,
        &small,
        ((SIDE - w) / 2).into(),
        ((SIDE - h) / 2).into(),
    );
    Ok(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_fully_qualified_single_code_points_are_listed() {
        let text = "# group: Smileys & Emotion\n\
            1F600 ; fully-qualified # \u{1F600} E1.0 grinning face\n\
            263A FE0F ; fully-qualified # \u{263A}\u{FE0F} E0.6 smiling face\n\
            263A ; unqualified # \u{263A} E0.6 smiling face\n\
            1F44B 1F3FB ; fully-qualified # \u{1F44B}\u{1F3FB} E1.0 waving hand: light skin tone\n\
            1F3FB ; component # \u{1F3FB} E1.0 light skin tone\n";
        let emoji = single_code_point_emoji(text).unwrap();
        let listed: Vec<(char, &str)> = emoji
            .iter()
            .map(|e| (e.character, e.name.as_str()))
            .collect();
        assert_eq!(
            listed,
            [('\u{1F600}', "grinning face"), ('\u{263A}', "smiling face")]
        );
    }
}
