Profile: DepotImagingStudy
Parent: ImagingStudy
Id: depot-imaging-study
Title: "Pseudonymized ImagingStudy"
Description: "A study as imaging-depot serves it: built from the index of a project's pseudonymized copies, every UID the pseudonymized one, the subject a pseudonymous Patient."
* insert DeclaresProfile
* insert Pseudonymized
* identifier 1..*
* identifier ^slicing.discriminator.type = #value
* identifier ^slicing.discriminator.path = "system"
* identifier ^slicing.rules = #open
* identifier ^slicing.description = "The Study Instance UID, beside any other identifier"
* identifier contains studyInstanceUid 1..1
* identifier[studyInstanceUid] ^short = "Study Instance UID as urn:oid:<uid>"
* identifier[studyInstanceUid].system 1..1
* identifier[studyInstanceUid].system = "urn:dicom:uid" (exactly)
* identifier[studyInstanceUid].value 1..1
* status 1..1
* modality.system 1..1
* modality.system = $DCM
* subject 1..1
* subject only Reference(DepotPatient)
* endpoint 1..*
* numberOfSeries 1..1
* numberOfInstances 1..1
* series.uid 1..1
* series.modality 1..1
* series.modality.system 1..1
* series.modality.system = $DCM
* series.bodySite.system 1..1
* series.bodySite.system = $SCT
* series.instance.uid 1..1
* series.instance.sopClass 1..1
* series.instance.sopClass.system 1..1
* series.instance.sopClass.system = "urn:ietf:rfc:3986"
* series.instance.sopClass.code 1..1

Instance: depot-imaging-study-example
InstanceOf: DepotImagingStudy
Usage: #example
Title: "A pseudonymized CT study"
* meta.profile = Canonical(DepotImagingStudy)
* meta.security[pseudonymized] = $ObservationValue#PSEUDED "pseudonymized"
* identifier[studyInstanceUid].system = "urn:dicom:uid"
* identifier[studyInstanceUid].value = "urn:oid:2.25.301465871634201930497536416102741376853"
* status = #available
* modality = $DCM#CT
* subject = Reference(depot-patient-example)
* started = "2021-03-04"
* endpoint = Reference(Endpoint/dicomweb)
* numberOfSeries = 1
* numberOfInstances = 1
* series[0].uid = "2.25.187395633918207183093316311102306390217"
* series[0].number = 2
* series[0].modality = $DCM#CT
* series[0].numberOfInstances = 1
* series[0].bodySite = $SCT#818981001 "Abdomen"
* series[0].instance[0].uid = "2.25.97416380466612818452390418591946658271"
* series[0].instance[0].sopClass = urn:ietf:rfc:3986#urn:oid:1.2.840.10008.5.1.4.1.1.2
* series[0].instance[0].number = 1
