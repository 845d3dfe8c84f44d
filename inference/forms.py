from django import forms

# What the file picker offers; the engine decides what is really accepted, by content, not by name.
ACCEPT = ".png,.jpg,.jpeg,.dcm,image/png,image/jpeg,application/dicom"


class UploadForm(forms.Form):
    image = forms.FileField(
        label="Chest X-ray",
        # Empty files go to the engine so that pages and API give the same message for them.
        allow_empty_file=True,
        error_messages={"required": "Choose a PNG, JPEG or DICOM file to upload."},
        widget=forms.ClearableFileInput(attrs={"accept": ACCEPT}),
    )
