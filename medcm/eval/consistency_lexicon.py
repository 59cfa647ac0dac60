"""The word lists of the evaluation's contradiction checker (`medcm.eval.consistency`), kept apart from the drafter's."""

from __future__ import annotations

import re

# Sections that describe the request, the acquisition or the past, not this study's images.
SKIPPED_SECTIONS = frozenset({"INDICATION", "TECHNIQUE", "COMPARISON", "DIFFERENTIAL DIAGNOSIS", "DISCUSSION",
                               "RECOMMENDATION", "PMH", "PSH", "PMX", "PSHX", "FMHX", "MEDS", "ROS", "ALL", "POH"})

# canonical finding -> surface terms; "term|organ" gives the organ the word itself names.
FINDINGS: dict[str, tuple[str, ...]] = {
    "nodule": ("nodule", "micronodule", "nodular opacity", "nodular density"),
    "mass": ("mass",),
    "mass effect": ("mass effect",),
    "lesion": ("lesion",),
    "opacity": ("opacity", "opacities", "opacification", "infiltrate", "airspace disease|lung",
                "ground glass|lung", "ground-glass|lung"),
    "consolidation": ("consolidation|lung", "pneumonia|lung", "airspace consolidation|lung"),
    "effusion": ("effusion", "hydrothorax|pleura"),
    "pneumothorax": ("pneumothorax|pleura", "pneumothoraces|pleura"),
    "atelectasis": ("atelectasis|lung", "collapse"),
    "edema": ("edema", "oedema", "vascular congestion|lung"),
    "enlargement": ("enlargement", "enlarged", "cardiomegaly|heart", "hepatomegaly|liver", "splenomegaly|spleen",
                    "hepatosplenomegaly|liver"),
    "fracture": ("fracture",),
    "hemorrhage": ("hemorrhage", "haemorrhage", "hematoma", "haematoma", "bleed"),
    "infarct": ("infarct", "infarction"),
    "calcification": ("calcification", "calcified granuloma", "granuloma"),
    "cyst": ("cyst",),
    "stone": ("stone", "calculus", "calculi", "nephrolithiasis|kidney", "cholelithiasis|gallbladder",
              "urolithiasis", "choledocholithiasis|bile duct"),
    "hydronephrosis": ("hydronephrosis|kidney", "hydroureteronephrosis|kidney"),
    "lymphadenopathy": ("lymphadenopathy", "adenopathy", "enlarged lymph node", "enlarged node"),
    "ascites": ("ascites|peritoneum",),
    "free air": ("free air", "pneumoperitoneum|peritoneum", "free intraperitoneal air|peritoneum"),
    "obstruction": ("obstruction",),
    "dilatation": ("dilatation", "dilation", "dilated"),
    "thickening": ("thickening", "thickened"),
    "emphysema": ("emphysema|lung",),
    "aneurysm": ("aneurysm",),
    "dissection": ("dissection",),
    "abscess": ("abscess",),
    "metastasis": ("metastasis", "metastases", "metastatic disease"),
    "hernia": ("hernia",),
    "stenosis": ("stenosis",),
    "embolism": ("embolism", "embolus", "emboli"),
    "thrombosis": ("thrombosis", "thrombus"),
    "pneumomediastinum": ("pneumomediastinum|mediastinum",),
    "cardiomegaly": (),  # folded into "enlargement" at the heart
}

# canonical organ -> surface terms; "term|side|subsite" gives what the term itself says.
ORGANS: dict[str, tuple[str, ...]] = {
    "lung": ("lung", "pulmonary", "lung field", "lung zone", "lung parenchyma", "parenchymal", "lobe", "lingula|left",
             "rll|right|lower", "rml|right|middle", "rul|right|upper", "lll|left|lower", "lul|left|upper",
             "lung base", "lung apex", "lung apices"),
    "airway": ("airway", "trachea", "tracheal", "bronchus", "bronchi", "bronchial", "mainstem bronchus"),
    "pleura": ("pleura", "pleural", "pleural space", "costophrenic", "costophrenic angle"),
    "heart": ("heart", "cardiac", "cardiac silhouette", "left ventricle", "right ventricle", "left ventricular",
              "right ventricular", "left atrium", "right atrium", "left atrial", "right atrial", "myocardium",
              "myocardial"),
    "pericardium": ("pericardium", "pericardial"),
    "mediastinum": ("mediastinum", "mediastinal", "hilar", "hilum", "hila"),
    "cardiomediastinal": ("cardiomediastinal", "cardiomediastinal silhouette"),
    "liver": ("liver", "hepatic", "hepatic parenchyma", "liver parenchyma", "lobe of the liver", "hepatic lobe",
              "liver lobe", "hepatic segment", "liver segment"),
    "gallbladder": ("gallbladder", "gall bladder", "cholecystic"),
    "bile duct": ("bile duct", "biliary", "common bile duct", "cbd", "intrahepatic duct"),
    "pancreas": ("pancreas", "pancreatic"),
    "spleen": ("spleen", "splenic"),
    "kidney": ("kidney", "renal", "perinephric"),
    "adrenal": ("adrenal", "adrenal gland"),
    "bladder": ("bladder", "urinary bladder", "vesical"),
    "bowel": ("bowel", "intestine", "intestinal"),
    "small bowel": ("small bowel", "small intestine", "ileum", "ileal", "jejunum", "jejunal", "duodenum", "duodenal"),
    "colon": ("colon", "colonic", "large bowel", "cecum", "cecal", "sigmoid", "rectosigmoid", "rectum", "rectal"),
    "appendix": ("appendix", "appendiceal"),
    "stomach": ("stomach", "gastric"),
    "esophagus": ("esophagus", "esophageal", "oesophagus", "oesophageal"),
    "peritoneum": ("peritoneum", "peritoneal", "intraperitoneal", "abdominal cavity"),
    "brain": ("brain", "cerebral", "cerebrum", "intracranial", "cerebellum", "cerebellar", "brainstem",
              "brain stem", "frontal lobe|-|frontal", "parietal lobe|-|parietal", "temporal lobe|-|temporal",
              "occipital lobe|-|occipital", "hemisphere", "white matter", "basal ganglia", "thalamus", "pons"),
    "spine": ("spine", "spinal", "vertebra", "vertebrae", "vertebral", "vertebral body", "disc", "spinal cord",
              "cervical spine", "thoracic spine", "lumbar spine"),
    "bone": ("bone", "osseous", "skeletal", "marrow"),
    "rib": ("rib",),
    "skull": ("skull", "calvarium", "calvarial"),
    "sacrum": ("sacrum", "sacral", "sacroiliac"),
    "pelvis": ("pelvis", "pelvic", "acetabulum", "acetabular", "iliac"),
    "hip": ("hip",),
    "femur": ("femur", "femoral", "femoral neck|-|neck", "femoral head|-|head"),
    "knee": ("knee", "patella", "patellar"),
    "tibia": ("tibia", "tibial", "fibula", "fibular"),
    "ankle": ("ankle", "talus", "calcaneus"),
    "foot": ("foot", "feet", "metatarsal"),
    "shoulder": ("shoulder", "glenoid", "labrum", "labral", "rotator cuff"),
    "humerus": ("humerus", "humeral", "humeral head|-|head"),
    "elbow": ("elbow",),
    "wrist": ("wrist", "scaphoid", "carpal"),
    "hand": ("hand", "finger", "metacarpal"),
    "breast": ("breast",),
    "thyroid": ("thyroid", "lobe of the thyroid", "thyroid lobe"),
    "prostate": ("prostate", "prostatic"),
    "uterus": ("uterus", "uterine", "endometrium", "endometrial", "myometrium"),
    "ovary": ("ovary", "ovaries", "ovarian", "adnexa", "adnexal"),
    "testis": ("testis", "testes", "testicle", "testicular", "scrotal", "scrotum"),
    "aorta": ("aorta", "aortic"),
    "lymph node": ("lymph node", "nodal"),
    "pulmonary artery": ("pulmonary artery", "pulmonary arteries", "pulmonary arterial"),
    "portal vein": ("portal vein", "portal venous"),
    "vessel": ("hepatic vein", "hepatic artery", "renal artery", "renal vein", "splenic vein", "splenic artery",
               "pulmonary vein", "carotid", "jugular"),
    "sinus": ("sinus", "paranasal sinus", "maxillary sinus"),
    "orbit": ("orbit", "orbital", "retrobulbar", "extraocular muscle", "rectus muscle"),
    "globe": ("globe", "eye", "ocular"),
    "optic nerve": ("optic nerve",),
    "soft tissue": ("soft tissue", "subcutaneous"),
}
CHEST = ("lung", "pleura", "heart", "mediastinum", "pericardium")
# What a normal statement about a region covers: "the lungs are clear" also says the pleural spaces are.
NORMAL_COVERS = {"chest": CHEST, "lung": ("lung", "pleura"), "cardiomediastinal": ("heart", "mediastinum")}
NORMAL_MEANS = {"costophrenic": "effusion"}  # "the costophrenic angles are sharp": no effusion, nothing more
NORMAL_ASPECTS = frozenset("attenuation appearance signal echotexture echogenicity density enhancement "
                            "morphology".split())
SIDES = {"left": "left", "right": "right", "bilateral": "bilateral", "bilaterally": "bilateral", "both": "bilateral"}
# Words naming a part of an organ: a denial that names one leaves the other parts open.
SUBSITES = frozenset("upper lower middle mid apical apex apices basal basilar base bases head body tail neck dome "
                      "frontal parietal temporal occipital anterior posterior medial lateral superior inferior "
                      "proximal distal cortical medullary peripheral central".split())
NORMAL_WORDS = ["clear", "normal", "unremarkable", "negative", "sharp"]
STUDY_WORDS = ["study", "exam", "examination", "radiograph", "radiographs", "x-ray", "xray", "film", "ct", "mri",
                "mr", "scan", "ultrasound", "cxr"]
NORMAL_LEAD = frozenset({"a", "an", "the", "essentially", "entirely", "completely", "grossly"})

HEDGE = re.compile(r"\b(possible|possibly|probable|probably|likely|may|might|could|questionable|question of|"
                    r"suspicious for|suspected|suspect|concern for|concerning for|exclude|excluded|rule out|"
                    r"r/o|evaluate for|versus|vs|differential|consider|considered|if|favor|favored|"
                    r"suggestive of|suggests|suggesting|cannot be excluded|borderline)\b|\?")
HISTORY = re.compile(r"\b(history of|hx of|status post|s/p|prior|previous|previously|resected|removed)\b")
# A sentence tied to one of several time points (MedPix reports narrate serial studies): it may differ from
# another time point without contradiction.
TIMED = re.compile(r"\b(days?|hd|initial|initially|follow-up|follow up|followup|repeat|subsequent|subsequently|"
                    r"later|admission|after|weeks?|months?|years?|interval|developed|earlier|presentation|"
                    r"post-?operative|pre-?operative|post-?op|pre-?op)\b")
RECOMMENDATION = re.compile(r"[^.;,]*\b(recommend\w*|advised|suggested)\b[^.;,]*")
EXCLUSIVE = re.compile(r"\b(other|another|additional|further|new|second|more|remaining|rest|remainder|residual|"
                        r"recurrent|recurrence|significant|acute|large|substantial|gross|abnormally)\b")
NEGATION_WORDS = frozenset({"no", "not", "without", "negative", "free", "absence", "absent", "neither", "nor", "none"})
LIST_STOPS = frozenset({"or", "and", ",", "/"})
# Words between a negation and its finding that leave the denial as broad as the bare finding.
PLAIN = frozenset("a an any of for to is are was were be been seen identified noted evident evidence sign signs "
                   "suspicious focal discrete definite definitive obvious visible identifiable appreciable convincing "
                   "measurable drainable abnormal apparent there".split())
REFERENCE = frozenset({"the", "this", "that", "these", "those", "its", "their", "his", "her", "said"})
EXCEPTION = re.compile(r"\b(otherwise|except|apart from|aside from|other than|besides|but)\b")
CLAUSE_WORDS = frozenset({"and", "but", "with", "without", "while", "whereas", "which", "however", "although"})
CLAUSE_PUNCT = frozenset({",", ";", ":", "(", ")"})
