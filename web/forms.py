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

    def clean_image(self):
        # Django keeps the last of several files sent under one name; analysing one of them
        # silently would be a guess.
        sent = len(self.files.getlist(self.add_prefix("image")))
        if sent > 1:
            raise forms.ValidationError(f"Upload one image at a time ({sent} files were sent).")
        return self.cleaned_data["image"]
