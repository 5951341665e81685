Extension: DepotChangeSummary
Id: depot-change-summary
Title: "Pseudonymization change summary"
Description: "What a pseudonymization batch changed, attribute by attribute and action by action, counted over the instances (no value of any attribute)."
Context: Provenance
* value[x] 1..1
* value[x] only string

Profile: DepotProvenancePseudonymization
Parent: Provenance
Id: depot-provenance-pseudonymization
Title: "Provenance of a pseudonymization"
Description: "How pseudonymized studies were made: the batch that produced them (PSEUD), the custodian and the software as agents, the pseudonymization profile and the PS3.15 table as policies."
* insert DeclaresProfile
* extension contains DepotChangeSummary named changeSummary 0..1
* target 1..*
* target only Reference(ImagingStudy)
* recorded 1..1
* policy 1..*
* activity 1..1
* activity = $ActCode#PSEUD
* agent 2..*

Profile: DepotProvenanceDerivation
Parent: Provenance
Id: depot-provenance-derivation
Title: "Provenance of a derived object"
Description: "How a derived object (a segmentation, a report, a conversion) was made from stored studies: DERIVE, the sources as entities, who or what derived it as agents."
* insert DeclaresProfile
* target 1..*
* recorded 1..1
* activity 1..1
* activity = $DataOperation#DERIVE
* entity 1..*
* entity.role = #source
* agent 1..*

Instance: depot-provenance-pseudonymization-example
InstanceOf: DepotProvenancePseudonymization
Usage: #example
Title: "An ingest batch"
* meta.profile = Canonical(DepotProvenancePseudonymization)
* extension[changeSummary].valueString = "PACS export: 1 instances, profile basic v1. Changes (attribute: action (instances)): PatientName: replaced (1)"
* target = Reference(depot-imaging-study-example)
* recorded = "2024-05-06T07:08:09.000Z"
* policy[0] = "https://w3id.org/imaging-depot/pseudonymization/basic/1"
* policy[1] = "http://dicom.nema.org/medical/dicom/2024b/output/chtml/part15/chapter_E.html"
* activity = $ActCode#PSEUD "pseudonymization"
* agent[0].type = $ParticipantType#custodian "Custodian"
* agent[0].who.display = "The hospital"
* agent[1].type = $ParticipantType#assembler "Assembler"
* agent[1].who.display = "imaging-depot 0.1.0"

Instance: depot-provenance-derivation-example
InstanceOf: DepotProvenanceDerivation
Usage: #example
Title: "A segmentation derived from a study"
* meta.profile = Canonical(DepotProvenanceDerivation)
* target.identifier.system = "urn:dicom:uid"
* target.identifier.value = "urn:oid:2.25.241032468133446012394016536440427346019"
* recorded = "2024-05-07T10:00:00.000Z"
* activity = $DataOperation#DERIVE "derive"
* entity[0].role = #source
* entity[0].what = Reference(depot-imaging-study-example)
* agent[0].type = $ParticipantType#author "Author"
* agent[0].who.display = "A segmentation model"
