//! The icon set (`datasets/images/icons/`): the full-colour 48×48 PNG icons of two real
//! themes (GNOME 3.12 and Adwaita 43's legacy icons), named by their freedesktop icon names
//! made readable; single icons to name, and grids of four icons in which to find one.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use image::imageops::FilterType;
use image::{Rgb, RgbImage, RgbaImage};

use super::debian::DebianPackage;
use super::image_set::{
    Example, HeldOut, ImageSet, Task, check_disjoint, flatten, multiple_choice,
};
use super::seeded::SeededRng;

/// Where the set is written, from the repository root.
const FOLDER: &str = "datasets/images/icons";
/// The seed of every random choice of the set.
const SEED: u64 = 0x1c0b_5e70_0000_0002;
/// Icon names (as labels) held out; the others are trained on.
const EVAL_LABELS: usize = 80;
/// Single-icon images of the train split.
const TRAIN_SINGLES: usize = 240;
/// Single-icon images of the held-out split.
const EVAL_SINGLES: usize = 100;
/// Four-icon grids of the train split.
const TRAIN_GRIDS: usize = 80;
/// Four-icon grids of the held-out split.
const EVAL_GRIDS: usize = 40;
/// The side of every image: the tiny model's input.
const SIDE: u32 = 64;
/// The side of the themes' icons used (pixels); a single icon is centred unscaled.
const ICON_SIDE: u32 = 48;
/// The side of a grid cell: an icon scaled down to a quarter of the image.
const CELL_SIDE: u32 = SIDE / 2;
/// The cells of a grid, in reading order; the choices of a grid's task.
const POSITIONS: [&str; 4] = ["top left", "top right", "bottom left", "bottom right"];

/// An icon theme and the folder of its full-colour 48×48 PNGs.
struct Theme {
    /// The package that ships it.
    package: DebianPackage,
    /// The folder of the icons in the unpacked package (read recursively).
    folder: &'static str,
}

/// The themes: GNOME's classic full-colour theme, and the legacy full-colour icons that
/// Adwaita 43 still ships; the same freedesktop names drawn in two styles.
const THEMES: [Theme; 2] = [
    Theme {
        package: DebianPackage {
            name: "gnome-icon-theme",
            version: "3.12.0-5",
        },
        folder: "usr/share/icons/gnome/48x48",
    },
    Theme {
        package: DebianPackage {
            name: "adwaita-icon-theme",
            version: "43-1",
        },
        folder: "usr/share/icons/Adwaita/48x48/legacy",
    },
];

/// Words of icon names that are run together or abbreviated, spelled out in labels.
const SPELLED_OUT: [(&str, &str); 14] = [
    ("ac", "AC"),
    ("debian", "Debian"),
    ("dialpad", "dial pad"),
    ("faq", "FAQ"),
    ("fullscreen", "full screen"),
    ("harddisk", "hard disk"),
    ("html", "HTML"),
    ("ltr", "left to right"),
    ("multidisk", "multiple disks"),
    ("notjunk", "not junk"),
    ("pda", "PDA"),
    ("publicshare", "public share"),
    ("readonly", "read only"),
    ("vpn", "VPN"),
];

/// The question of a single icon.
const SINGLE_QUESTION: &str = "Which icon is this?";

/// Makes the icon set: labels split at random into `EVAL_LABELS` held out and the rest
/// trained on; in each split, single icons (each label's images of both themes, a random
/// selection of them) and grids of four icons of different labels.
pub(crate) fn icon_set() -> anyhow::Result<ImageSet> {
    let mut by_label: BTreeMap<String, Vec<RgbaImage>> = BTreeMap::new();
    for theme in &THEMES {
        let folder = theme.package.unpacked()?.join(theme.folder);
        for (name, path) in icon_files(&folder)? {
            let icon = image::open(&path)
                .with_context(|| format!("decoding {}", path.display()))?
                .to_rgba8();
            // Animations are strips of frames, not one icon.
            if icon.dimensions() != (ICON_SIDE, ICON_SIDE) {
                continue;
            }
            by_label.entry(label(&name)).or_default().push(icon);
        }
    }
    let mut rng = SeededRng::new(SEED);
    let mut labels: Vec<String> = by_label.keys().cloned().collect();
    rng.shuffle(&mut labels);
    let train_labels = labels.split_off(EVAL_LABELS);
    let eval_labels = labels;
    check_disjoint(FOLDER, &train_labels, &eval_labels)?;

    let train = singles(&mut rng, &by_label, &train_labels, TRAIN_SINGLES)?
        .into_iter()
        .map(|(label, image)| single_example(label, image))
        .chain((0..TRAIN_GRIDS).map(|_| grid_example(&mut rng, &by_label, &train_labels).0))
        .collect();
    let mut eval: Vec<HeldOut> = singles(&mut rng, &by_label, &eval_labels, EVAL_SINGLES)?
        .into_iter()
        .map(|(label, image)| {
            let task = multiple_choice(&mut rng, &label, &eval_labels);
            HeldOut {
                example: single_example(label, image),
                task,
            }
        })
        .collect();
    for _ in 0..EVAL_GRIDS {
        let (example, asked) = grid_example(&mut rng, &by_label, &eval_labels);
        eval.push(HeldOut {
            example,
            task: Task::Choice {
                choices: POSITIONS.map(String::from).to_vec(),
                answer: asked,
            },
        });
    }
    let notices = THEMES
        .iter()
        .map(|theme| theme.package.notice())
        .collect::<anyhow::Result<_>>()?;
    Ok(ImageSet {
        folder: FOLDER,
        train,
        eval,
        notices,
    })
}

/// The full-colour icons under `folder`, as (icon name, path) sorted by path: regular files
/// only (a theme's symbolic links are other names of the same pictures), without symbolic
/// (monochrome) icons and right-to-left mirror images.
fn icon_files(folder: &Path) -> anyhow::Result<Vec<(String, std::path::PathBuf)>> {
    let mut files = Vec::new();
    let mut folders = vec![folder.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in
            std::fs::read_dir(&folder).with_context(|| format!("listing {}", folder.display()))?
        {
            let path = entry
                .with_context(|| format!("listing {}", folder.display()))?
                .path();
            let kind = std::fs::symlink_metadata(&path)
                .with_context(|| format!("reading {}", path.display()))?
                .file_type();
            if kind.is_dir() {
                folders.push(path);
                continue;
            }
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".png"))
            else {
                continue;
            };
            if kind.is_file() && !name.contains("symbolic") && !name.ends_with("-rtl") {
                files.push((name.to_string(), path));
            }
        }
    }
    files.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(files)
}

/// An icon name made readable: the words between hyphens, less the MIME filler words `x` and
/// `generic`, with the words of `SPELLED_OUT` spelled out: `folder-documents` → "folder
/// documents", `x-office-spreadsheet` → "office spreadsheet", `drive-harddisk` → "drive hard
/// disk".
fn label(icon_name: &str) -> String {
    icon_name
        .split('-')
        .filter(|word| !matches!(*word, "x" | "generic"))
        .map(|word| {
            SPELLED_OUT
                .iter()
                .find(|(short, _)| *short == word)
                .map_or(word, |(_, long)| *long)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `count` (label, icon) pairs drawn from every image of `labels`, in a random order.
fn singles(
    rng: &mut SeededRng,
    by_label: &BTreeMap<String, Vec<RgbaImage>>,
    labels: &[String],
    count: usize,
) -> anyhow::Result<Vec<(String, RgbImage)>> {
    let mut pairs: Vec<(&String, &RgbaImage)> = labels
        .iter()
        .flat_map(|label| by_label[label].iter().map(move |icon| (label, icon)))
        .collect();
    if pairs.len() < count {
        bail!("{FOLDER}: {} icons, {count} wanted", pairs.len());
    }
    rng.shuffle(&mut pairs);
    Ok(pairs
        .into_iter()
        .take(count)
        .map(|(label, icon)| {
            let background = light_colour(rng);
            let mut image = RgbImage::from_pixel(SIDE, SIDE, background);
            let offset = ((SIDE - ICON_SIDE) / 2).into();
            image::imageops::replace(&mut image, &flatten(icon, background), offset, offset);
            (label.clone(), image)
        })
        .collect())
}

/// A single icon: its caption, and the question that asks which icon it is.
fn single_example(label: String, image: RgbImage) -> Example {
    Example {
        image,
        caption: Some(format!("An icon for {label}.")),
        question: SINGLE_QUESTION.into(),
        reply: format!("The {label} icon."),
    }
}

/// A grid of four icons of different labels of `labels` (each in a random theme) and the
/// question which of them is the icon of one of the four; returns the example and the index
/// of that cell in `POSITIONS`.
fn grid_example(
    rng: &mut SeededRng,
    by_label: &BTreeMap<String, Vec<RgbaImage>>,
    labels: &[String],
) -> (Example, usize) {
    let background = light_colour(rng);
    let mut image = RgbImage::from_pixel(SIDE, SIDE, background);
    let mut shown: Vec<&String> = Vec::new();
    while shown.len() < POSITIONS.len() {
        let label = &labels[rng.below(labels.len())];
        if !shown.contains(&label) {
            shown.push(label);
        }
    }
    for (cell, label) in shown.iter().enumerate() {
        let icons = &by_label[*label];
        let icon = &icons[rng.below(icons.len())];
        // Flattened before scaling: the filter then never mixes in the colour of transparent
        // pixels.
        let tile = flatten(icon, background);
        let small = image::imageops::resize(&tile, CELL_SIDE, CELL_SIDE, FilterType::Lanczos3);
        let (x, y) = ((cell as u32 % 2) * CELL_SIDE, (cell as u32 / 2) * CELL_SIDE);
        image::imageops::replace(&mut image, &small, x.into(), y.into());
    }
    let asked = rng.below(POSITIONS.len());
    let example = Example {
        image,
        caption: None,
        question: format!("Which of the four icons is the {} icon?", shown[asked]),
        reply: format!("The one at the {}.", POSITIONS[asked]),
    };
    (example, asked)
}

/// A light background colour (every channel in 200..=255), so that the themes' dark outlines
/// and shadows stay visible.
fn light_colour(rng: &mut SeededRng) -> Rgb<u8> {
    Rgb(std::array::from_fn(|_| rng.between(200, 255) as u8))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn icon_names_read_as_words() {
        for (name, expected) in [
            ("folder-documents", "folder documents"),
            (
                "x-office-spreadsheet-template",
                "office spreadsheet template",
            ),
            ("audio-x-generic", "audio"),
            ("drive-harddisk", "drive hard disk"),
            ("emblem-readonly", "emblem read only"),
            ("text-html", "text HTML"),
        ] {
            assert_eq!(label(name), expected);
        }
    }
}
