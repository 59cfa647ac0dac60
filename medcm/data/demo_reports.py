"""The demo's report wording: findings and normal statements in varied words, never contradicting what
was drawn (a normal statement is left out when the drawn finding would make it false)."""

from __future__ import annotations

import numpy as np

from medcm.report.text import is_negated

__all__ = ["demo_report", "pick"]


def pick(rng: np.random.Generator, options):
    """One of `options`, drawn with `rng`."""
    return options[int(rng.integers(len(options)))]


# Normal statements per exam: wording variants -> the findings (comma-separated; "lung": any lung finding)
# that would make the statement false.
_NORMALS: dict[str, dict[tuple[str, ...], str]] = {
    "CR": {
        ("The heart size is normal.", "Normal cardiac silhouette.",
         "The cardiomediastinal silhouette is within normal limits."): "cardiomegaly",
        ("The lungs are clear.", "The lungs are well expanded and clear."): "lung",
        ("No focal consolidation.", "No focal airspace opacity."): "consolidation,pulmonary nodule",
        ("No pleural effusion.", "No pleural effusions.", "The costophrenic angles are sharp."): "pleural effusion",
        ("No pneumothorax.", "There is no pneumothorax."): "pneumothorax",
        ("No suspicious pulmonary nodule.",): "pulmonary nodule",
        ("The osseous structures are intact.", "No acute osseous abnormality."): "",
    },
    "CT CHEST": {
        ("The lungs are clear.",): "lung",
        ("No pulmonary nodules.", "No suspicious pulmonary nodule."): "pulmonary nodule",
        ("No pleural effusion.", "No pleural effusion or thickening."): "pleural effusion",
        ("Heart size is normal.", "Normal heart size."): "",
        ("No mediastinal lymphadenopathy.", "No enlarged mediastinal lymph nodes."): "",
        ("No pneumothorax.",): "",
        ("The visualized osseous structures are unremarkable.",): "",
    },
    "CT ABDOMEN": {
        ("The liver is normal in size and attenuation.", "The liver is unremarkable."): "liver lesion",
        ("No focal liver lesion.", "No focal hepatic lesion."): "liver lesion",
        ("The spleen is unremarkable.", "Normal spleen."): "",
        ("The kidneys are unremarkable.",): "",
        ("No free fluid.", "No ascites."): "",
        ("No acute osseous abnormality.",): "",
    },
}
_LUNG = "pleural effusion,pulmonary nodule,pneumothorax,consolidation"
_NORMAL_IMPRESSIONS = {
    "CR": ("No acute cardiopulmonary abnormality.", "Normal chest radiograph.", "No acute cardiopulmonary process."),
    "CT CHEST": ("No acute intrathoracic abnormality.", "Normal CT of the chest."),
    "CT ABDOMEN": ("No acute abnormality in the abdomen.", "Unremarkable CT of the abdomen."),
}
_EFFUSION_IMPRESSIONS = ("{Sev} {side} pleural {effusion}.", "{Side} pleural {effusion}, {sev}.")
# (modality, finding) -> (findings variants, impression variants). No template may hold a negation.
_TEMPLATES: dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...]]] = {
    ("CR", "pleural effusion"): (
        ("{Sev} {side} pleural {effusion}.", "There {is} {a}{sev} {side} pleural {effusion} with blunting of {angle}.",
         "Blunting of {angle}, consistent with {a}{sev} {side} pleural {effusion}."), _EFFUSION_IMPRESSIONS),
    ("CR", "pulmonary nodule"): (
        ("There is a {mm} mm rounded nodule in the {zone}.", "A {cm} cm pulmonary nodule projects over the {zone}.",
         "Well-circumscribed {mm} mm nodular opacity in the {zone}."),
        ("{Mm} mm pulmonary nodule in the {zone}; CT is recommended for further evaluation.",
         "Pulmonary nodule in the {zone}, measuring {cm} cm.")),
    ("CR", "cardiomegaly"): (
        ("The heart is {deg}enlarged.", "Cardiomegaly, cardiothoracic ratio approximately {ctr}.",
         "The cardiac silhouette is {deg}enlarged, with a cardiothoracic ratio of about {ctr}."),
        ("{Sev} cardiomegaly.", "Enlarged cardiac silhouette.")),
    ("CR", "pneumothorax"): (
        ("There is a {sev} {side} pneumothorax.", "{Sev} {side} apical pneumothorax with a visible visceral pleural line.",
         "A {sev} {side} pneumothorax is present, the lung edge separated from the chest wall."),
        ("{Sev} {side} pneumothorax.", "{Side} pneumothorax, {sev}.")),
    ("CR", "consolidation"): (
        ("Patchy airspace opacity in the {lobe}, consistent with pneumonia.", "Consolidation in the {lobe}.",
         "There is focal consolidation in the {lobe}."), ("{Lobe} pneumonia.", "{Lobe} consolidation, likely pneumonia.")),
    ("CT", "pulmonary nodule"): (
        ("{Mm} mm solid nodule in the {lobe}.", "There is a {mm} mm pulmonary nodule in the {lobe}.",
         "A solid {cm} cm nodule is seen in the {lobe}."),
        ("{Mm} mm {lobe} pulmonary nodule.", "Pulmonary nodule in the {lobe}, {mm} mm; follow-up CT recommended.")),
    ("CT", "pleural effusion"): (
        ("{Sev} {side} pleural {effusion} layering dependently.", "{Sev} dependent {side} pleural {effusion}.",
         "There {is} {a}{sev} {side} pleural {effusion} with adjacent compressive atelectasis."), _EFFUSION_IMPRESSIONS),
    ("CT", "liver lesion"): (
        ("There is a {cm} cm hypodense lesion in the {lobe} of the liver.",
         "Hypoattenuating {cm} cm hepatic lesion in the {lobe}.",
         "A well-defined {mm} mm low-attenuation lesion in the {lobe} of the liver."),
        ("{Cm} cm hypodense liver lesion, likely a cyst; MRI may be considered.",
         "Hypodense lesion in the {lobe} of the liver.")),
}
_SYNONYMS = {"moderate": ("moderate", "moderate-sized"), "large": ("large", "large-volume")}


def _words(finding: str, details: dict[str, str], rng: np.random.Generator) -> dict[str, str]:
    """Template words for one case's details, each also with a capitalised key (`Side`)."""
    side, severity, zone, mm = (details.get(k, "") for k in ("side", "severity", "zone", "size_mm"))
    both = side == "bilateral"
    words = {
        "side": side, "sev": pick(rng, _SYNONYMS.get(severity, (severity,))) if finding == "pleural effusion" else severity,
        "effusion": "effusions" if both else "effusion", "is": "are" if both else "is", "a": "" if both else "a ",
        "angle": "both costophrenic angles" if both else f"the {side} costophrenic angle",
        "zone": f"{side} {zone} {pick(rng, ('zone', 'lung zone'))}", "lobe": f"{side} {zone} lobe".replace("  ", " "),
        "mm": mm, "cm": f"{int(mm) / 10:.1f}" if mm else "", "ctr": details.get("ctr", ""), "deg": f"{severity}ly ",
    }
    words.update({key.capitalize(): value[:1].upper() + value[1:] for key, value in list(words.items())})
    return words


def demo_report(finding: str, modality: str, body_part: str, details: dict[str, str], rng: np.random.Generator) -> str:
    """A FINDINGS + IMPRESSION report of one demo study, worded with `rng`.

    Args:
        finding: what was drawn ("normal" for none).
        modality: "CR" or "CT".
        body_part: "CHEST" or "ABDOMEN" (CT).
        details: what the drawer chose (side, size in mm, severity), filled into the wording.
        rng: the wording's random stream.
    """
    exam = "CR" if modality == "CR" else f"CT {body_part}"
    normals = [pick(rng, variants) for variants, false_for in _NORMALS[exam].items()
               if finding not in false_for.replace("lung", _LUNG).split(",")]
    keep = np.sort(rng.choice(len(normals), size=int(rng.integers(2, min(5, len(normals)) + 1)), replace=False))
    sentences = [normals[i] for i in keep]
    negatives = [n for n in normals if is_negated(n)]
    if negatives and not any(is_negated(x) for x in sentences):  # radiologists state pertinent negatives
        sentences.append(pick(rng, negatives))
    if rng.random() < 0.3:  # radiologists mostly keep a fixed order, but not always
        rng.shuffle(sentences)
    if finding == "normal":
        impression = pick(rng, _NORMAL_IMPRESSIONS[exam])
    else:
        findings, impressions = _TEMPLATES[(modality, finding)]
        words = _words(finding, details, rng)
        where = 0 if rng.random() < 0.6 else int(rng.integers(len(sentences) + 1))
        sentences.insert(where, pick(rng, findings).format(**words))
        impression = pick(rng, impressions).format(**words)
    return f"FINDINGS: {' '.join(sentences)}\nIMPRESSION: {impression}"
